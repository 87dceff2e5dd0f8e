import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, 'tests'))


@pytest.fixture(scope='session', autouse=True)
def _register_modules():
    import mmdet.utils

    from mmdeform.utils import register_all_modules
    mmdet.utils.register_all_modules(init_default_scope=False)
    register_all_modules(init_default_scope=True)


@pytest.fixture(scope='session')
def shapes_root(tmp_path_factory):
    """A small generated shapes dataset shared by the tests that train."""
    from mmdeform.datasets import ShapesSpec, generate_shapes_dataset
    root = str(tmp_path_factory.mktemp('data') / 'shapes')
    generate_shapes_dataset(root, ShapesSpec(num_train=16, num_val=8))
    return root
