from importlib import metadata

from mmdeform.utils.version_check import find_version_problems


def _lookup(versions):
    def lookup(name):
        if name not in versions:
            raise metadata.PackageNotFoundError(name)
        return versions[name]
    return lookup


def test_installed_stack_passes():
    assert find_version_problems() == []


def test_messages_name_package_found_and_needed():
    problems = find_version_problems(
        [('mmcv', '2.0.0rc4', '2.2.0'), ('mmdet', '3.0.0', '3.4.0'), ('torch', '2.0.0', None)],
        lookup=_lookup({'mmcv': '2.2.0', 'torch': '2.1.0'}))
    assert problems == ['mmcv>=2.0.0rc4,<2.2.0 is required, found mmcv==2.2.0',
                        'mmdet>=3.0.0,<3.4.0 is required but is not installed']
