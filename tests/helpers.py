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


def run_tool(args, timeout=900, env=None, check=True):
    """Run a command from the repository root; return the CompletedProcess. ``env`` adds to
    the environment; a value of None removes the variable."""
    full_env = dict(os.environ, PYTHONPATH=ROOT)
    full_env.update(env or {})
    full_env = {k: v for k, v in full_env.items() if v is not None}
    proc = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          env=full_env)
    if check and proc.returncode != 0:
        raise AssertionError(f'{args} failed with {proc.returncode}\n--- stdout\n'
                             f'{proc.stdout[-4000:]}\n--- stderr\n{proc.stderr[-6000:]}')
    return proc


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
