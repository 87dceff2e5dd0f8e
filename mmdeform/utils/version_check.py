"""Check the installed OpenMMLab stack before anything else is imported.

A mismatch fails at ``import mmdeform`` with one message that names each
package that is wrong, the version found and the range needed, instead of a
bare ``assert`` deep inside mmdet or an obscure import error later.
"""
from importlib import metadata

from packaging.version import Version

# (distribution, minimum inclusive, maximum exclusive). mmdet 3.3.0 itself
# asserts mmcv>=2.0.0rc4,<2.2.0. torch: the oldest verified is 2.1.2 (the suite with
# mmcv 2.1.0 built for it, README "Versions"); 2.0 was never run.
REQUIREMENTS = (
    ('torch', '2.1.0', None),
    ('mmengine', '0.7.1', '1.0.0'),
    ('mmcv', '2.0.0rc4', '2.2.0'),
    ('mmdet', '3.0.0', '3.4.0'),
)

INSTALL_HINT = ('Install the tested stack (torch 2.14.1, mmengine 0.10.7, '
                'mmcv 2.1.0 with ops, mmdet 3.3.0) with `bash tools/install.sh`, '
                'or see docs/get_started.md.')


def _describe(low, high):
    parts = [f'>={low}'] + ([f'<{high}'] if high else [])
    return ','.join(parts)


def find_version_problems(requirements=REQUIREMENTS, lookup=metadata.version):
    """Return one line per distribution that is missing or out of range."""
    problems = []
    for name, low, high in requirements:
        try:
            found = lookup(name)
        except metadata.PackageNotFoundError:
            problems.append(f'{name}{_describe(low, high)} is required but is not installed')
            continue
        version = Version(found)
        if version < Version(low) or (high is not None and version >= Version(high)):
            problems.append(f'{name}{_describe(low, high)} is required, found {name}=={found}')
    return problems


def check_versions():
    problems = find_version_problems()
    if problems:
        raise ImportError('mmdeform cannot run with the installed packages:\n  - ' +
                          '\n  - '.join(problems) + '\n' + INSTALL_HINT)
