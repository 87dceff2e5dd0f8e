"""Kill -9 soak: SIGKILL the whole process group at moments drawn from a seeded generator
(one of them in the middle of a checkpoint save), resume with --resume until the schedule
ends, and get the weights of the run that was never interrupted, bit for bit.

After every kill: every ``*.pth`` in the work dir is a complete, readable checkpoint and
``last_checkpoint`` names one of them (the only other files a kill leaves are the
``.*.partial`` temporaries of an interrupted save, which --resume removes).
"""
import os
import random
import signal
import socket
import subprocess
import time

import torch
from helpers import PYTHON, ROOT, shapes_options

from mmdeform.utils.checkpoint import load_checkpoint_file

CONFIG = 'tests/data/configs/detr_shapes_soak.py'
MAX_EPOCHS = 3
ITERS = 12  # 16 images, 4 per iteration (one process, or two processes of 2)
PAUSE = 0.15  # seconds after each iteration, so that kills land where they are drawn


def _free_port():
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


def _command(work_dir, root, processes, resume):
    args = ['--work-dir', str(work_dir)] + (['--resume'] if resume else [])
    options = ['--cfg-options', *shapes_options(root)]
    if processes == 1:
        return [PYTHON, 'tools/train.py', CONFIG, *args, *options]
    options.append('train_dataloader.batch_size=2')
    return ['bash', 'tools/dist_train.sh', CONFIG, str(processes), *args, *options]


def _start(work_dir, root, processes, resume, slow_save=False):
    probe = work_dir / 'probe.txt'
    probe.unlink(missing_ok=True)
    env = dict(os.environ, PYTHONPATH=f'{ROOT}:{ROOT}/tests', SOAK_PROBE=str(probe),
               OMP_NUM_THREADS='1', PORT=str(_free_port()), PYTHON=PYTHON,
               SOAK_ITER_PAUSE=str(PAUSE))
    env.pop('SOAK_SLOW_SAVE', None)
    if slow_save:
        env['SOAK_SLOW_SAVE'] = '1'
    log = open(work_dir / 'console.log', 'a')
    proc = subprocess.Popen(_command(work_dir, root, processes, resume), cwd=ROOT, env=env,
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    return proc, probe


def _progress(probe):
    """(the last iteration reported, whether a slow save has started)"""
    lines = probe.read_text().split() if probe.exists() else []
    iters = [int(x) for x in lines if x.isdigit()]
    return (iters[-1] if iters else 0), 'saving' in lines


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


def _kill_when(proc, probe, ready, timeout=600):
    start = time.time()
    while proc.poll() is None and time.time() - start < timeout:
        if ready(*_progress(probe)):
            _kill_9(proc)
            return True
        time.sleep(0.02)
    raise AssertionError(f'the run ended or stalled before the kill ({_progress(probe)}); see '
                         f'{probe.parent / "console.log"}')


def _check_work_dir(work_dir):
    """Every checkpoint complete and readable; last_checkpoint names one of them."""
    names = os.listdir(work_dir)
    for name in names:
        if name.endswith('.pth'):
            assert isinstance(load_checkpoint_file(str(work_dir / name))['state_dict'], dict)
    if 'last_checkpoint' in names:
        pointed = (work_dir / 'last_checkpoint').read_text().strip()
        assert pointed.endswith('.pth') and os.path.isfile(pointed), pointed
        load_checkpoint_file(pointed)
    return names


def _run_to_end(work_dir, root, processes, resume):
    proc, _ = _start(work_dir, root, processes, resume)
    assert proc.wait(timeout=600) == 0, (work_dir / 'console.log').read_text()[-4000:]


def _final_weights(work_dir):
    return load_checkpoint_file(str(work_dir / f'epoch_{MAX_EPOCHS}.pth'))['state_dict']


def _soak(tmp_path, root, processes, seed):
    rng = random.Random(seed)
    reference, soaked = tmp_path / 'reference', tmp_path / 'soaked'
    reference.mkdir()
    soaked.mkdir()
    _run_to_end(reference, root, processes, resume=False)

    kills = []
    # 1. at a random moment of the second epoch (epoch_1.pth exists): during iteration 6..8
    at, delay = rng.randint(5, 7), rng.uniform(0, PAUSE)
    proc, probe = _start(soaked, root, processes, resume=True)
    _kill_when(proc, probe, lambda it, _: it >= at and (time.sleep(delay) or True))
    kills.append(('iteration', _progress(probe)[0], _check_work_dir(soaked)))
    # 2. in the middle of writing the next checkpoint (epoch_2.pth)
    proc, probe = _start(soaked, root, processes, resume=True, slow_save=True)
    _kill_when(proc, probe, lambda it, saving: saving)
    names = _check_work_dir(soaked)
    assert any(n.endswith('.pth.partial') for n in names), names  # half-written, hidden
    kills.append(('save', _progress(probe)[0], names))
    # 3. a random number of iterations after the resume, before the end
    proc, probe = _start(soaked, root, processes, resume=True)
    after, delay = rng.randint(1, 4), rng.uniform(0, PAUSE)
    first = []
    _kill_when(proc, probe, lambda it, _: it > 0 and (first or first.append(it) or True) and
               it >= min(first[0] + after, ITERS - 1) and (time.sleep(delay) or True))
    kills.append(('iteration', _progress(probe)[0], _check_work_dir(soaked)))
    # and on to the end
    _run_to_end(soaked, root, processes, resume=True)
    names = _check_work_dir(soaked)
    assert not any(n.endswith('.partial') for n in names), names
    log = (soaked / 'console.log').read_text()
    assert log.count('Resuming from') == 3, (log[-3000:], kills)

    full, resumed = _final_weights(reference), _final_weights(soaked)
    assert full.keys() == resumed.keys()
    changed = load_checkpoint_file(str(reference / f'epoch_{MAX_EPOCHS}.pth'))
    for key in full:
        assert torch.equal(full[key], resumed[key]), (key, kills)
    return kills, changed


def test_kill_9_soak_one_process(shapes_root, tmp_path):
    _soak(tmp_path, shapes_root, processes=1, seed=11)


def test_kill_9_soak_two_processes(shapes_root, tmp_path):
    _soak(tmp_path, shapes_root, processes=2, seed=12)
