"""Image loading that names the file and the dataset index of an image it cannot decode."""
import os.path as osp
from typing import Optional

from mmcv.transforms import LoadImageFromFile as MMCVLoadImageFromFile

from mmdeform.registry import TRANSFORMS
from mmdeform.utils.errors import CorruptImageError


def _describe(path: str) -> str:
    try:
        size = osp.getsize(path)
        with open(path, 'rb') as f:
            head = f.read(8)
    except OSError:  # a remote backend
        return 'not a decodable image'
    if size == 0:
        return 'the file is empty (0 bytes)'
    kinds = {b'\x89PNG': 'PNG', b'\xff\xd8\xff': 'JPEG', b'BM': 'BMP'}
    kind = next((name for magic, name in kinds.items() if head.startswith(magic)), None)
    if kind:
        return f'a truncated or corrupt {kind} ({size} bytes)'
    return f'not an image: the file starts with {head!r} ({size} bytes)'


@TRANSFORMS.register_module()
class LoadImageFromFile(MMCVLoadImageFromFile):
    """mmcv's :class:`~mmcv.transforms.LoadImageFromFile` (same arguments), registered
    under the same name in mmdeform's scope. An image that cannot be read or
    decoded raises :class:`CorruptImageError` naming the file, its index in the
    dataset and what is wrong, in training and in testing alike. The index is
    the image's position in the dataset's own list (``dataset_index``, which
    mmdeform's :class:`CocoDataset` records before ``indices`` or filtering
    pick a subset), so it names the same image whatever subset is loaded;
    other datasets give their ``sample_idx``. (mmcv asserts ``failed to load
    image`` without the index.)

    A JPEG cut short is not detected: OpenCV decodes what is there and fills
    the rest with grey, with a warning on stderr.
    """

    def transform(self, results: dict) -> Optional[dict]:
        try:
            return super().transform(results)
        except Exception as e:  # noqa: B902  reading or decoding; the file is the cause
            path = results.get('img_path', '?')
            index = results.get('dataset_index', results.get('sample_idx', '?'))
            where = f'image {path} (dataset index {index})'
            if isinstance(e, FileNotFoundError) or not osp.exists(path):
                raise FileNotFoundError(f'{where} does not exist') from None
            raise CorruptImageError(f'{where} cannot be decoded: {_describe(path)}') from None
