"""Kill -9 soak: SIGKILL every process of a training run at two moments, resume with --resume
until the schedule ends, and get the weights of the run that was never interrupted, bit for bit.

The soak config trains 3 epochs of 4 iterations (16 images, 4 per iteration: one process, or
two processes of 2) with a checkpoint per epoch, only the newest kept, and validation after
epochs 2 and 3. The kills:

1. in the middle of writing ``epoch_2.pth`` (a test-only hook writes it in two halves and
   waits between them), in a run started with --resume in an empty work dir, so from
   scratch: ``epoch_1.pth`` stays the last checkpoint and the half-written file is a hidden
   ``.partial``;
2. in the run resumed from ``epoch_1.pth``, after it has saved ``epoch_2.pth`` (dropping
   ``epoch_1.pth``) and validated: between two iterations of epoch 3, after iteration 9 or 10
   plus a delay, both drawn from a seeded generator.

The last run resumes from ``epoch_2.pth``, written by a resumed run, and trains to the end.
After every kill, every ``*.pth`` in the work dir is a complete, readable checkpoint and
``last_checkpoint`` names one of them (the only other files a kill leaves are the
``.*.partial`` temporaries of an interrupted save, which --resume removes); the iterations
each run reports show where its kill landed and that it started right after the iteration
of the checkpoint ``last_checkpoint`` named. The uninterrupted run trains alongside the first
soaked run: each process has one thread, and that kill waits for the slow save, not a time.
"""
import os
import random
import signal
import subprocess
import time

import torch
from helpers import PYTHON, ROOT, SHAPES_TEST_SPEC, ForkedTool, can_fork, shapes_options
from mmengine.config import Config

from mmdeform.utils.checkpoint import load_checkpoint_file

CONFIG = 'tests/data/configs/detr_shapes_soak.py'
_cfg = Config.fromfile(CONFIG)
EPOCHS = _cfg.train_cfg.max_epochs  # the kills need 3: a save to interrupt, one to follow
PER_EPOCH = SHAPES_TEST_SPEC['num_train'] // _cfg.train_dataloader.batch_size
PAUSE = 0.15  # seconds after each iteration, so that kills land where they are drawn


def _command(work_dir, root, processes, resume):
    args = ['--work-dir', str(work_dir)] + (['--resume'] if resume else [])
    options = ['--cfg-options', *shapes_options(root)]
    if processes == 1:
        return [PYTHON, 'tools/train.py', CONFIG, *args, *options]
    options.append('train_dataloader.batch_size=2')
    return ['bash', 'tools/dist_train.sh', CONFIG, str(processes), *args, *options]


def _start(work_dir, root, processes, resume, slow_save=None, pause=0.0):
    probe = work_dir / 'probe.txt'
    probe.unlink(missing_ok=True)
    env = dict(os.environ, PYTHONPATH=f'{ROOT}:{ROOT}/tests', SOAK_PROBE=str(probe),
               OMP_NUM_THREADS='1', PYTHON=PYTHON, SOAK_ITER_PAUSE=str(pause))
    for key in ('PORT', 'SOAK_SLOW_SAVE'):  # without PORT, torchrun picks a free port itself
        env.pop(key, None)
    if slow_save:
        env['SOAK_SLOW_SAVE'] = slow_save
    command = _command(work_dir, root, processes, resume)
    with open(work_dir / 'console.log', 'a') as log:
        if can_fork(command):  # one process: a fork of this one (helpers.ForkedTool)
            return ForkedTool(command, env, log, log), probe
        proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
    return proc, probe


def _progress(probe):
    """(the iterations reported so far, whether a slow save has started)"""
    lines = probe.read_text().split() if probe.exists() else []
    return [int(x) for x in lines if x.isdigit()], 'saving' in lines


def _process_groups(root_pid):
    """The process groups of ``root_pid`` and all its descendants. torchrun starts each rank
    in a session of its own, so killing the launcher's group alone would leave them running."""
    parents = {}
    for entry in os.listdir('/proc'):
        if entry.isdigit():
            try:
                with open(f'/proc/{entry}/stat') as f:
                    fields = f.read().rsplit(')', 1)[1].split()
                parents[int(entry)] = (int(fields[1]), int(fields[2]))  # ppid, pgid
            except (OSError, IndexError):
                continue
    groups, frontier = {os.getpgid(root_pid)}, [root_pid]
    while frontier:
        pid = frontier.pop()
        for child, (ppid, pgid) in parents.items():
            if ppid == pid:
                groups.add(pgid)
                frontier.append(child)
    return groups


def _kill_9(proc):
    """SIGKILL every process group of the run (launcher, ranks, data-loader workers)."""
    for group in _process_groups(proc.pid):
        try:
            os.killpg(group, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait()


def _kill_when(proc, probe, ready, delay=0.0, timeout=600):
    """Kill the run ``delay`` seconds after ``ready(iterations, saving)`` first holds; return
    the progress at the moment of the kill."""
    start = time.time()
    while proc.poll() is None and time.time() - start < timeout:
        if ready(*_progress(probe)):
            time.sleep(delay)
            _kill_9(proc)
            return _progress(probe)
        time.sleep(0.02)
    raise AssertionError(f'the run ended or stalled before the kill ({_progress(probe)}); see '
                         f'{probe.parent / "console.log"}')


def _check_work_dir(work_dir):
    """Every checkpoint complete and readable; last_checkpoint names one of them. Returns the
    names in the work dir and the epoch of the checkpoint last_checkpoint names (0: none)."""
    names = sorted(os.listdir(work_dir))
    for name in names:
        if name.endswith('.pth'):
            assert isinstance(load_checkpoint_file(str(work_dir / name))['state_dict'], dict)
    if 'last_checkpoint' not in names:
        return names, 0
    pointed = (work_dir / 'last_checkpoint').read_text().strip()
    assert pointed.endswith('.pth') and os.path.isfile(pointed), pointed
    return names, load_checkpoint_file(pointed)['meta']['epoch']


def _wait(proc, probe):
    """Wait for a run to end; return the iterations it trained."""
    assert proc.wait(timeout=600) == 0, (probe.parent / 'console.log').read_text()[-4000:]
    return _progress(probe)[0]


def _final_weights(work_dir):
    return load_checkpoint_file(str(work_dir / f'epoch_{EPOCHS}.pth'))['state_dict']


def _iterations(first_epoch, last):
    """The iterations from the start of epoch ``first_epoch`` (1-based) to ``last``."""
    return list(range((first_epoch - 1) * PER_EPOCH + 1, last + 1))


def _soak(tmp_path, root, processes, seed):
    rng = random.Random(seed)
    second_last, last = EPOCHS - 1, EPOCHS
    reference, soaked = tmp_path / 'reference', tmp_path / 'soaked'
    reference.mkdir()
    soaked.mkdir()
    # the uninterrupted run, alongside the first soaked one (one thread per process)
    uninterrupted = _start(reference, root, processes, resume=False)
    # 1. in the middle of writing the checkpoint of the second-last epoch
    proc, probe = _start(soaked, root, processes, resume=True,
                         slow_save=f'epoch_{second_last}.pth')
    iterations, saving = _kill_when(proc, probe, lambda _, saving: saving)
    assert iterations == _iterations(1, second_last * PER_EPOCH) and saving, iterations
    names, epoch = _check_work_dir(soaked)
    assert epoch == second_last - 1 and f'.epoch_{second_last}.pth.partial' in names, names
    assert _wait(*uninterrupted) == _iterations(1, last * PER_EPOCH)
    # 2. resumed from the epoch before: during the last epoch, after the save of the one
    # before; the kill is timed, so this run has the machine to itself
    at = second_last * PER_EPOCH + rng.randint(1, PER_EPOCH - 2)
    delay = rng.uniform(0, PAUSE)
    proc, probe = _start(soaked, root, processes, resume=True, pause=PAUSE)
    iterations, _ = _kill_when(proc, probe, lambda its, _: its and its[-1] >= at, delay)
    # the kill lands in the pause after iteration `at` (or, late, an iteration after it),
    # before the end of the last epoch
    assert iterations == _iterations(second_last, iterations[-1]), iterations
    assert at <= iterations[-1] < last * PER_EPOCH, (at, iterations)
    names, epoch = _check_work_dir(soaked)
    assert epoch == second_last and f'epoch_{second_last - 1}.pth' not in names, names
    assert not any(n.endswith('.partial') for n in names), names
    # and on to the end, from the checkpoint of the second-last epoch
    assert _wait(*_start(soaked, root, processes, resume=True)) == \
        _iterations(last, last * PER_EPOCH)
    names, epoch = _check_work_dir(soaked)
    assert epoch == last and not any(n.endswith('.partial') for n in names), names
    log = (soaked / 'console.log').read_text()
    assert log.count('Resuming from') == 2, log[-3000:]

    want, got = _final_weights(reference), _final_weights(soaked)
    assert want.keys() == got.keys()
    for key in want:
        assert torch.equal(want[key], got[key]), key


def test_kill_9_soak_one_process(shapes_root, tmp_path):
    _soak(tmp_path, shapes_root, 1, seed=11)


def test_kill_9_soak_two_processes(shapes_root, tmp_path):
    _soak(tmp_path, shapes_root, 2, seed=12)
