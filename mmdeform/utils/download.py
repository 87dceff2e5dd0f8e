"""Checkpoint downloads: fetched once into a cache, verified by the hash in their name."""
import os
import os.path as osp
import re
import urllib.error
from typing import Optional
from urllib.parse import urlparse

import torch
from mmengine.dist import barrier, get_dist_info

# OpenMMLab's naming: <name>-<first 8 (or more) hex digits of the sha256>.pth
HASH_SUFFIX = re.compile(r'-([a-f0-9]{8,64})\.(pth|pt|ckpt)$')


class ChecksumError(ValueError):
    pass


def checkpoint_cache_dir() -> str:
    """``$MMDEFORM_CHECKPOINTS``, else torch hub's ``checkpoints`` directory, where
    mmdet and torchvision cache their downloads too."""
    return os.environ.get('MMDEFORM_CHECKPOINTS') or osp.join(torch.hub.get_dir(), 'checkpoints')


def expected_hash_prefix(url: str) -> Optional[str]:
    match = HASH_SUFFIX.search(osp.basename(urlparse(url).path))
    return match.group(1) if match else None


def _download(url: str, path: str, progress: bool) -> None:
    prefix = expected_hash_prefix(url)
    try:
        # writes to a temporary file and renames it; checks the sha256 prefix first
        torch.hub.download_url_to_file(url, path, hash_prefix=prefix, progress=progress)
    except urllib.error.HTTPError as e:
        raise ConnectionError(f'could not download {url}: HTTP {e.code} {e.reason}') from None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, 'reason', e)
        raise ConnectionError(f'could not download {url}: {reason}') from None
    except RuntimeError as e:
        if 'invalid hash value' in str(e):
            raise ChecksumError(
                f'{url}: the sha256 of the downloaded file does not start with {prefix}, '
                f'the hash in its name ({e}); the download is corrupt or the URL points '
                'to another file. Nothing was cached.') from None
        raise


def cache_name(url: str) -> str:
    """The file name of ``url`` in the cache: its last path segment; a share link
    ending in ``/`` (``https://cloud.tsinghua.edu.cn/f/<id>/?dl=1``) gives ``<id>.pth``."""
    path = urlparse(url).path
    name = osp.basename(path)
    if not name and path.rstrip('/'):
        name = osp.basename(path.rstrip('/')) + '.pth'
    if not name:
        raise ValueError(f'{url!r} names no file')
    return name


def download_checkpoint(url: str, cache_dir: Optional[str] = None,
                        progress: Optional[bool] = None) -> str:
    """Return the local path of ``url``'s file, downloading it on first use.

    When the file name ends in ``-<sha256 prefix>.pth`` the download is verified
    before it enters the cache. In a distributed run rank 0 downloads while the
    others wait.
    """
    cache_dir = cache_dir or checkpoint_cache_dir()
    name = cache_name(url)
    path = osp.join(cache_dir, name)
    progress = os.isatty(2) if progress is None else progress
    rank, world_size = get_dist_info()
    if rank == 0 and not osp.isfile(path):
        os.makedirs(cache_dir, exist_ok=True)
        print(f'Downloading {url} to {path}', flush=True)
        _download(url, path, progress)
    if world_size > 1:
        barrier()
    if not osp.isfile(path):
        raise FileNotFoundError(f'{url} was not downloaded to {path} (rank {rank})')
    return path
