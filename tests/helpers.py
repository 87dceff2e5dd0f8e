"""Shared builders for the tests: batches with padding, models with dropout off."""
import contextlib
import os
import subprocess
import sys

import torch
from mmdet.structures import DetDataSample
from mmengine.structures import InstanceData

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PYTHON = sys.executable
DEVICES = ('cpu', 'cuda')


def device_under_test() -> str:
    """``MMDEFORM_TEST_DEVICE`` (``cpu`` by default, or ``cuda``): where the tests that
    support it run our model or op (tools/gpu_check.sh sets it). A CUDA request without
    CUDA is an error, never a quiet run on the CPU; on CUDA, TF32 is switched off, so that
    float32 tolerances mean float32."""
    device = os.environ.get('MMDEFORM_TEST_DEVICE', 'cpu')
    if device not in DEVICES:
        raise ValueError(f'MMDEFORM_TEST_DEVICE={device!r}: expected one of {", ".join(DEVICES)}')
    if device == 'cuda':
        if not torch.cuda.is_available():
            raise RuntimeError('MMDEFORM_TEST_DEVICE=cuda, but torch sees no CUDA device '
                               f'(torch {torch.__version__}, built for CUDA '
                               f'{torch.version.cuda or "none"})')
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
    return device


# Two padded images at a quarter of make_batch's pixels, for the float64 training parity:
# it checks the computation's structure (every level keeps >= 1 x 2 cells at stride 64 and
# a padded border), which does not need the larger images, and R50 in float64 is slow.
FLOAT64_SIZES = ((64, 96), (48, 80))


def make_batch(sizes=((120, 160), (96, 128)), boxes_per_image=None, seed=0, num_classes=80):
    """Random uint8 images of different sizes (so the batch is padded) and targets.

    ``boxes_per_image``: a list with the number of boxes of each image.
    Returns ``(list of (3, H, W) uint8 tensors, list of DetDataSample)``.
    """
    g = torch.Generator().manual_seed(seed)
    boxes_per_image = boxes_per_image or [3] * len(sizes)
    images, samples = [], []
    for (h, w), n in zip(sizes, boxes_per_image):
        images.append(torch.randint(0, 256, (3, h, w), generator=g, dtype=torch.uint8))
        xy = torch.rand(n, 2, generator=g) * torch.tensor([w * 0.6, h * 0.6])
        wh = 4 + torch.rand(n, 2, generator=g) * torch.tensor([w * 0.35, h * 0.35])
        sample = DetDataSample()
        sample.set_metainfo(dict(img_shape=(h, w), ori_shape=(h, w), scale_factor=(1.0, 1.0),
                                 pad_shape=(h, w)))
        gt = InstanceData()
        gt.bboxes = torch.cat([xy, xy + wh], dim=1)
        gt.labels = torch.randint(0, num_classes, (n,), generator=g)
        sample.gt_instances = gt
        samples.append(sample)
    return images, samples


def batch_to(device, inputs, samples):
    """A preprocessed batch on ``device``."""
    return inputs.to(device), [s.to(device) for s in samples]


def preprocess(model, images, samples, training=False):
    data = model.data_preprocessor(dict(inputs=images, data_samples=samples), training)
    return data['inputs'], data['data_samples']


def randomise_bn(module, seed=0):
    """Random running statistics and affine values in every BatchNorm of ``module``, so
    that folding them into a conv changes the weights (frozen BN included)."""
    from torch.nn.modules.batchnorm import _BatchNorm
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, _BatchNorm):
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=g))
                m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
                m.weight.copy_(torch.randn(n, generator=g))
                m.bias.copy_(torch.randn(n, generator=g))


def disable_dropout(model):
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
        if isinstance(m, torch.nn.MultiheadAttention):
            m.dropout = 0.0
    return model


# The environment of tools/dist_train.sh in the tests: no PORT, so that torchrun picks a free
# port itself (a port the test picked could be taken by another process before torchrun binds
# it); one thread per process, as torchrun would set.
DIST_ENV = dict(PORT=None, OMP_NUM_THREADS='1', PYTHON=PYTHON)


def run_tool(args, timeout=900, env=None, check=True, fresh=False):
    """Run a command from the repository root; return the CompletedProcess. ``env`` adds to
    the environment; a value of None removes the variable.

    A Python script (``[PYTHON, 'tools/x.py', ...]``) runs in a fork of this test process
    when it can (:func:`_run_forked`): a process of its own, with its own exit status, file
    descriptors and environment, without the 4-5 s of importing torch, mmengine and mmdet
    again. ``fresh=True`` starts a new interpreter, as a user's shell does: the tests of
    each tool's main path keep one such run, so that a tool that fails to import or
    register what it needs is still caught."""
    full_env = dict(os.environ, PYTHONPATH=ROOT)
    full_env.update(env or {})
    full_env = {k: v for k, v in full_env.items() if v is not None}
    if not fresh and can_fork(args):
        proc = _run_forked(args, full_env, timeout)
    else:
        proc = subprocess.run(args, cwd=ROOT, capture_output=True, text=True,
                              timeout=timeout, env=full_env)
    if check and proc.returncode != 0:
        raise AssertionError(f'{args} failed with {proc.returncode}\n--- stdout\n'
                             f'{proc.stdout[-4000:]}\n--- stderr\n{proc.stderr[-6000:]}')
    return proc


def can_fork(args):
    """A Python script, from a test process whose torch runs one thread (pytest-xdist's
    workers, see conftest.py): OpenMP's thread pool does not survive a fork, and with one
    thread there is none."""
    return (len(args) > 1 and args[0] == PYTHON and str(args[1]).endswith('.py')
            and hasattr(os, 'fork') and torch.get_num_threads() == 1
            and not os.environ.get('MMDEFORM_TESTS_NO_FORK') and _autograd_survives_fork())


def _autograd_survives_fork() -> bool:
    """Whether a forked child of this process can run a backward pass. Once the autograd
    engine has started threads for a device (a backward that touched a non-CPU device
    type, e.g. in torch.library.opcheck's checks), a child's backward fails ("Unable to
    handle autograd's threading in combination with fork"): the tool then runs in a new
    interpreter instead. Probed by a fork, once it has failed never again."""
    global _FORK_SAFE
    if _FORK_SAFE:
        pid = os.fork()
        if pid == 0:
            try:
                x = torch.ones(1, requires_grad=True)
                (x * 2).sum().backward()
            except BaseException:
                os._exit(1)
            os._exit(0)
        _FORK_SAFE = os.waitpid(pid, 0)[1] == 0
    return _FORK_SAFE


_FORK_SAFE = True


class ForkedTool:
    """``python SCRIPT ARGS`` run as ``__main__`` in a forked child of this process, in a
    process group of its own, with stdout and stderr going to the given files; ``pid``,
    ``poll()``, ``wait(timeout)`` and ``returncode`` as ``subprocess.Popen`` has them."""

    def __init__(self, args, env, stdout, stderr):
        self.args, self.returncode = args, None
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        self.pid = os.fork()
        if self.pid == 0:
            self._child(args, env, stdout.fileno(), stderr.fileno())  # never returns
        try:  # as the child does: whichever runs first, a kill finds the group
            os.setpgid(self.pid, self.pid)
        except OSError:
            pass

    @staticmethod
    def _child(args, env, out, err):
        import logging
        import runpy
        code = 1
        try:
            os.setpgid(0, 0)
            os.dup2(out, 1)
            os.dup2(err, 2)
            old = (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__)
            sys.stdout = sys.__stdout__ = open(1, 'w', buffering=1, closefd=False)
            sys.stderr = sys.__stderr__ = open(2, 'w', buffering=1, closefd=False)
            # loggers made before the fork (mmengine's, some by earlier tests with streams
            # pytest has closed since) write to the new streams, as in a new process
            loggers = [logging.getLogger(), *logging.Logger.manager.loggerDict.values()]
            for handler in [h for lg in loggers for h in getattr(lg, 'handlers', [])]:
                if (isinstance(handler, logging.StreamHandler)
                        and not isinstance(handler, logging.FileHandler)):
                    handler.setStream(sys.stderr if handler.stream in old[1::2] else sys.stdout)
            os.environ.clear()
            os.environ.update(env)
            os.chdir(ROOT)
            script = os.path.join(ROOT, str(args[1]))
            sys.argv = [str(a) for a in args[1:]]
            sys.path[0:0] = [os.path.dirname(script)] + env.get('PYTHONPATH', '').split(':')
            try:
                runpy.run_path(script, run_name='__main__')
                code = 0
            except SystemExit as exit_:
                code = exit_.code if isinstance(exit_.code, int) else (exit_.code is not None)
                if isinstance(exit_.code, str):
                    print(exit_.code, file=sys.stderr)
            except BaseException:
                import traceback
                traceback.print_exc()
        finally:
            try:
                sys.stdout.flush()
                sys.stderr.flush()
            finally:
                os._exit(code)

    def poll(self):
        if self.returncode is None:
            done, status = os.waitpid(self.pid, os.WNOHANG)
            if done:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self, timeout=None):
        import time
        deadline = None if timeout is None else time.time() + timeout
        while self.poll() is None:
            if deadline is not None and time.time() > deadline:
                raise subprocess.TimeoutExpired(self.args, timeout)
            time.sleep(0.02)
        return self.returncode


def _run_forked(args, env, timeout):
    """:func:`run_tool` in a :class:`ForkedTool`: a CompletedProcess, as ``subprocess.run``
    returns."""
    import signal
    import tempfile
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = ForkedTool(args, env, out, err)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise
        texts = []
        for f in (out, err):
            f.seek(0)
            texts.append(f.read().decode(errors='replace'))
    return subprocess.CompletedProcess(args, proc.returncode, *texts)


# The size of the dataset that the ``shapes_root`` fixture generates.
SHAPES_TEST_SPEC = dict(num_train=16, num_val=8)


def shapes_options(root):
    """--cfg-options that point a shapes config at the generated test dataset in ``root``.

    The spec is passed too: a ShapesDataset whose spec differs from the one a
    generated dataset was written with regenerates it, at full size.
    """
    root = root.rstrip('/') + '/'
    spec = [f'{loader}.dataset.spec.{key}={value}'
            for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader')
            for key, value in SHAPES_TEST_SPEC.items()]
    return [f'train_dataloader.dataset.data_root={root}',
            f'val_dataloader.dataset.data_root={root}',
            f'test_dataloader.dataset.data_root={root}', *spec,
            f'val_evaluator.ann_file={root}annotations/instances_val.json',
            f'test_evaluator.ann_file={root}annotations/instances_val.json']


def load_tool(path):
    """Import a script (``tools/test.py``) as a module, to call its ``main`` in-process."""
    import importlib.util
    name = 'tool_' + os.path.splitext(path)[0].replace('/', '_')
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, path))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@contextlib.contextmanager
def one_thread():
    """Run torch on one thread, as the tools run in subprocesses (OMP_NUM_THREADS=1): the
    tests' models are tiny, and on a busy 2-core machine two threads made a training run
    several times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def train_in_process(argv):
    """``tools/train.py``'s main in this process, on one thread."""
    with one_thread():
        return load_tool('tools/train.py').main([str(a) for a in argv])


def tool_error(path, argv, capsys):
    """Run ``path``'s main as the command line does (:func:`run_tool_main`); return the one
    line it prints on stderr for the error it must stop with."""
    import pytest

    from mmdeform.utils.errors import run_tool_main
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        run_tool_main(load_tool(path).main, [str(a) for a in argv])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert 'Traceback' not in err, err
    return err.strip().splitlines()[-1]
