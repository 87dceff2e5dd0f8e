"""mmdeform: DETR-family detectors (DETR, Deformable DETR) on mmengine, mmcv and mmdet 3.x."""
from .utils.version_check import check_versions
from .version import __version__  # noqa: F401

check_versions()
