"""mmdeform: DETR-family detectors on mmengine, mmcv and mmdet 3.x."""
import re
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent


def read_version():
    text = (HERE / 'mmdeform' / 'version.py').read_text()
    return re.search(r"__version__ = '([^']+)'", text).group(1)


def read_requirements(name):
    lines = (HERE / 'requirements' / name).read_text().splitlines()
    return [ln.strip() for ln in lines if ln.strip() and not ln.startswith('#')]


setup(
    name='mmdeform',
    version=read_version(),
    description='DETR, Deformable DETR and DINO-style detectors for the OpenMMLab stack',
    long_description=(HERE / 'README.md').read_text() if (HERE / 'README.md').exists() else '',
    long_description_content_type='text/markdown',
    packages=find_packages(exclude=('configs', 'tools', 'demo', 'tests', 'tests.*')),
    python_requires='>=3.9',
    # Ranges, as mmdeform.utils.version_check enforces them; requirements/runtime.txt
    # pins the tested stack that tools/install.sh installs.
    install_requires=['torch>=2.0', 'mmengine>=0.7.1,<1.0', 'mmcv>=2.0.0rc4,<2.2.0',
                      'mmdet>=3.0.0,<3.4.0', 'scipy', 'pycocotools', 'setuptools<81'],
    extras_require={'tests': read_requirements('tests.txt')},
    license='Apache-2.0',
    zip_safe=False,
)
