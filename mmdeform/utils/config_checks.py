"""Loading a config for the tools, and checking its file paths before a run starts."""
import os.path as osp
from typing import Iterator, Optional, Tuple

from mmengine.config import Config

GENERATED_DATASETS = ('ShapesDataset', )


def _datasets(cfg: Config) -> Iterator[Tuple[str, dict]]:
    for split in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        loader = cfg.get(split)
        if not loader or 'dataset' not in loader:
            continue
        stack = [loader['dataset']]
        while stack:  # wrappers such as RepeatDataset / ConcatDataset
            dataset = stack.pop()
            if 'dataset' in dataset:
                stack.append(dataset['dataset'])
            stack.extend(dataset.get('datasets', []))
            if 'ann_file' in dataset:
                yield split, dataset


def _resolve(data_root, path):
    if not path or osp.isabs(path) or '://' in path:
        return path
    return osp.join(data_root, path) if data_root else path


def check_dataset_paths(cfg: Config, splits=('train_dataloader', 'val_dataloader',
                                             'test_dataloader')) -> None:
    """Raise ``FileNotFoundError`` naming the missing data root or annotation file."""
    for split, dataset in _datasets(cfg):
        if split not in splits:
            continue
        dtype = str(dataset.get('type', ''))
        if dtype.split('.')[-1] in GENERATED_DATASETS and dataset.get('generate', True):
            continue
        data_root = dataset.get('data_root')
        ann_file = _resolve(data_root, dataset.get('ann_file'))
        if '://' in (ann_file or ''):
            continue
        if data_root and not osp.isdir(data_root):
            raise FileNotFoundError(
                f'{split}.dataset.data_root {data_root!r} does not exist (needed for its '
                f'ann_file {ann_file!r}); put the {dtype or "dataset"} there or set '
                f'--cfg-options {split}.dataset.data_root=PATH')
        if ann_file and not osp.isfile(ann_file):
            raise FileNotFoundError(
                f'{split}.dataset.ann_file {ann_file!r} does not exist; check the data root '
                f'and annotation file name, or set --cfg-options {split}.dataset.ann_file=PATH')


def load_config(path: str, cfg_options: Optional[dict] = None, work_dir: Optional[str] = None,
                launcher: str = 'none') -> Config:
    """The config as mmdet's tools prepare it: ``--cfg-options`` merged, the work
    directory from ``--work-dir``, the config, or ``./work_dirs/<config name>``."""
    if not osp.isfile(path):
        raise FileNotFoundError(f'config file {path!r} does not exist')
    cfg = Config.fromfile(path)
    cfg.launcher = launcher
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    if work_dir is not None:
        cfg.work_dir = work_dir
    elif cfg.get('work_dir') is None:
        cfg.work_dir = osp.join('./work_dirs', osp.splitext(osp.basename(path))[0])
    _fused_optimizer_on_old_torch(cfg)
    return cfg


def _fused_optimizer_on_old_torch(cfg: Config) -> None:
    """torch < 2.4 fuses AdamW on CUDA only: without a GPU, drop ``fused=True`` (the same
    update, a dozen ops per parameter instead of one kernel) and say so, rather than
    fail when the optimizer is built."""
    import warnings

    import torch
    optimizer = cfg.get('optim_wrapper', {}).get('optimizer', {})
    old = tuple(int(x) for x in torch.__version__.split('+')[0].split('.')[:2]) < (2, 4)
    if optimizer.get('fused') and old and not torch.cuda.is_available():
        optimizer.pop('fused')
        warnings.warn(f'optim_wrapper.optimizer.fused=True needs CUDA on torch '
                      f'{torch.__version__} (the CPU from torch 2.4): using the unfused optimizer')
