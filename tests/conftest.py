import os
import shutil
import sys
import tempfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, 'tests'))

if os.environ.get('PYTEST_XDIST_WORKER'):
    # pytest.ini runs two workers (-n 2) on the two cores: one thread each, here and in
    # the tools the tests start, instead of four threads fighting over two cores
    os.environ['OMP_NUM_THREADS'] = '1'
    import torch
    torch.set_num_threads(1)


# The most the suite holds under its base temporary directory at one time, with pytest.ini's
# tmp_path_retention_policy = failed (measured: about 2 GB, the module fixtures' checkpoints).
TEMP_SPACE_NEEDED = 3 * 2**30


def pytest_configure(config):
    """An unusable MMDEFORM_TEST_DEVICE, or too little free space where the tests write, stops
    the run before any test (one line each), instead of tools failing at the end of the run."""
    from helpers import device_under_test
    try:
        device_under_test()
    except (ValueError, RuntimeError) as err:
        raise pytest.UsageError(str(err)) from None
    root = config.option.basetemp or os.environ.get('PYTEST_DEBUG_TEMPROOT') \
        or tempfile.gettempdir()
    root = os.path.abspath(root)
    while not os.path.isdir(root):  # a --basetemp that pytest has yet to create
        root = os.path.dirname(root)
    free = shutil.disk_usage(root).free
    if free < TEMP_SPACE_NEEDED:
        raise pytest.UsageError(
            f'{root} has {free / 2**30:.1f} GiB free; the tests need '
            f'{TEMP_SPACE_NEEDED / 2**30:.0f} GiB there (checkpoints and exports): free some, '
            'or point --basetemp at a disk with room')


@pytest.fixture(scope='session', autouse=True)
def _register_modules():
    import mmdet.utils

    from mmdeform.utils import register_all_modules
    mmdet.utils.register_all_modules(init_default_scope=False)
    register_all_modules(init_default_scope=True)


@pytest.fixture(scope='session')
def shapes_root(tmp_path_factory):
    """A small generated shapes dataset shared by the tests that train."""
    from helpers import SHAPES_TEST_SPEC

    from mmdeform.datasets import ShapesSpec, generate_shapes_dataset
    root = str(tmp_path_factory.mktemp('data') / 'shapes')
    generate_shapes_dataset(root, ShapesSpec(**SHAPES_TEST_SPEC))
    return root


@pytest.fixture(scope='session')
def tiny_checkpoint(shapes_root, tmp_path_factory):
    """A shapes Deformable DETR (refine + two-stage) trained 2 iterations by tools/train.py.

    Returns ``(config, checkpoint, cfg_options)``; pass the options to any tool
    that builds datasets, so that they read the generated test dataset.
    """
    from helpers import PYTHON, run_tool, shapes_options
    work_dir = tmp_path_factory.mktemp('tiny_ckpt')
    config = 'tests/data/configs/ddetr_shapes_tiny.py'
    options = shapes_options(shapes_root)
    run_tool([PYTHON, 'tools/train.py', config, '--work-dir', str(work_dir), '--cfg-options',
              *options])
    return config, str(work_dir / 'iter_2.pth'), options


# The files whose tests take longest (several processes each): collected first, so that
# under -n 2 --dist loadfile one worker starts on them while the other takes the rest,
# instead of one of them running alone at the end.
LONGEST_FIRST = ('test_kill_resume.py', 'test_dist_equivalence.py', 'test_dist_train.py',
                 'test_numerics.py', 'test_onnx_ddetr.py', 'test_onnx_dino.py',
                 'test_onnx_rtdetr.py')


def pytest_collection_modifyitems(items):
    items.sort(key=lambda item: item.path.name not in LONGEST_FIRST)
