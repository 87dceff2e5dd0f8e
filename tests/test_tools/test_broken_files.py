"""Broken checkpoints, images and configs: one line naming the file and what is wrong."""
import json
import re
import shutil

import pytest
import torch
from helpers import PYTHON, ROOT, run_tool, shapes_options, tool_error
from mmengine.config import Config

from mmdeform.registry import MODELS

DETR = 'tests/data/configs/detr_shapes_tiny.py'
SOAK = 'tests/data/configs/detr_shapes_soak.py'  # 2 data-loader workers, 64 px
CONVERTERS = ['tools/model_converters/mmdet_to_mmdeform.py',
              'tools/model_converters/official_detr.py',
              'tools/model_converters/official_deformable_detr.py',
              'tools/model_converters/publish_model.py']


@pytest.fixture(scope='module')
def broken(tiny_checkpoint, tmp_path_factory):
    """Files that are not checkpoints: garbage bytes, a truncated save, an empty file."""
    root = tmp_path_factory.mktemp('broken')
    data = open(tiny_checkpoint[1], 'rb').read()
    (root / 'garbage.pth').write_bytes(bytes(range(256)) * 8)
    (root / 'truncated.pth').write_bytes(data[:len(data) // 3])
    (root / 'empty.pth').write_bytes(b'')
    return root


WHAT = {'garbage.pth': r'not a PyTorch checkpoint: it starts with b.\\x00\\x01',
        'truncated.pth': r'the zip archive ends early \(\d+ bytes, no central directory\): the '
                         'file is truncated',
        'empty.pth': r'the file is empty \(0 bytes\)'}


def test_test_tool_names_a_garbage_checkpoint(tiny_checkpoint, broken, tmp_path):
    """The issue's report, as a user runs it: a subprocess, no traceback, one line."""
    config, _, options = tiny_checkpoint
    proc = run_tool([PYTHON, 'tools/test.py', config, str(broken / 'garbage.pth'), '--work-dir',
                     str(tmp_path), '--cfg-options', *options], check=False)
    assert proc.returncode == 1
    assert 'Traceback' not in proc.stderr, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert re.fullmatch(rf'error: CheckpointReadError: cannot read checkpoint '
                        rf'{re.escape(str(broken))}/garbage.pth: {WHAT["garbage.pth"]}.*', last)


@pytest.mark.parametrize('name', sorted(WHAT))
def test_test_tool_load_from_and_resume_name_the_broken_file(name, tiny_checkpoint, broken,
                                                               tmp_path, capsys):
    config, _, options = tiny_checkpoint
    path = str(broken / name)
    runs = {'tools/test.py': ['tools/test.py', [config, path, '--work-dir', tmp_path / 't',
                                                '--cfg-options', *options]],
            'load_from': ['tools/train.py', [config, '--work-dir', tmp_path / 'l', '--cfg-options',
                                             *options, f'load_from={path}']],
            '--resume': ['tools/train.py', [config, '--work-dir', tmp_path / 'r', '--resume', path,
                                            '--cfg-options', *options]]}
    for entry, (tool, argv) in runs.items():
        line = tool_error(tool, argv, capsys)
        assert re.fullmatch(rf'error: CheckpointReadError: cannot read checkpoint '
                            rf'{re.escape(path)}: {WHAT[name]}.*', line), (entry, line)


@pytest.mark.parametrize('converter', CONVERTERS)
def test_converters_name_the_broken_file(converter, broken, tmp_path, capsys):
    for name, what in WHAT.items():
        line = tool_error(converter, [broken / name, tmp_path / 'out.pth'], capsys)
        assert re.fullmatch(rf'error: CheckpointReadError: cannot read checkpoint '
                            rf'{re.escape(str(broken / name))}: {what}.*', line), line
        assert not (tmp_path / 'out.pth').exists()


def _detr_checkpoint(path, mmdet_layout=False):
    cfg = Config.fromfile(DETR)
    state = MODELS.build(cfg.model).state_dict()
    if mmdet_layout:
        state = {k.replace('bbox_head.cls_branch.', 'bbox_head.fc_cls.'): v
                 for k, v in state.items()}
    torch.save(dict(state_dict=state, meta=dict()), path)
    return str(path)


def test_another_family_is_named(tiny_checkpoint, tmp_path, capsys):
    config, _, options = tiny_checkpoint  # Deformable DETR, refine + two-stage
    detr = _detr_checkpoint(tmp_path / 'detr.pth')
    line = tool_error('tools/test.py', [config, detr, '--work-dir', tmp_path / 'w',
                                        '--cfg-options', *options], capsys)
    assert line == (f'error: CheckpointFamilyError: checkpoint {detr} looks like DETR weights, '
                    'but the config builds Deformable DETR (two-stage) (DeformableDETR); use a '
                    'DETR config')
    # the same through load_from, where other mismatches are only warnings
    line = tool_error('tools/train.py', [config, '--work-dir', tmp_path / 'l', '--cfg-options',
                                         *options, f'load_from={detr}'], capsys)
    assert 'looks like DETR weights' in line
    # an mmdet checkpoint given without conversion
    mmdet = _detr_checkpoint(tmp_path / 'mmdet_detr.pth', mmdet_layout=True)
    line = tool_error('tools/test.py', [DETR, mmdet, '--work-dir', tmp_path / 'm',
                                        '--cfg-options', *options], capsys)
    assert line.endswith('looks like DETR (mmdet 3.x format) weights, but the config builds DETR '
                         '(DETR); convert it first with '
                         'tools/model_converters/mmdet_to_mmdeform.py')
    # and the converter of another format
    line = tool_error('tools/model_converters/official_detr.py', [mmdet, tmp_path / 'o.pth'],
                      capsys)
    assert line == (f'error: CheckpointFamilyError: {mmdet} looks like DETR (mmdet 3.x format) '
                    'weights; this converter reads official facebookresearch/detr format '
                    'checkpoints')


def test_num_classes_must_match_the_dataset(tiny_checkpoint, tmp_path, capsys):
    config, _, options = tiny_checkpoint
    line = tool_error('tools/train.py', [config, '--work-dir', tmp_path, '--cfg-options',
                                         *options, 'model.bbox_head.num_classes=5'], capsys)
    assert re.fullmatch(r'error: ConfigMismatchError: model.bbox_head.num_classes is 5, but the '
                        r'train dataset \(ShapesDataset, .*annotations/instances_train.json\) '
                        r'has 4 classes in its metainfo \(rectangle, ellipse, triangle, cross\); '
                        r'set model.bbox_head.num_classes=4 .*', line), line


@pytest.fixture(scope='module')
def corrupt_root(shapes_root, tmp_path_factory):
    """A copy of the test dataset whose train image of index 3 and val image of index 1 are
    garbage, and whose train image of index 5 is a truncated PNG."""
    root = tmp_path_factory.mktemp('corrupt') / 'shapes'
    shutil.copytree(shapes_root, root)
    for split, index, how in (('train', 3, 'garbage'), ('val', 1, 'garbage'),
                              ('train', 5, 'truncated')):
        images = json.load(open(root / 'annotations' / f'instances_{split}.json'))['images']
        path = root / split / images[index]['file_name']
        data = path.read_bytes()
        path.write_bytes(b'garbage!' * 10 if how == 'garbage' else data[:len(data) // 2])
    return root


def _names_image(line, root, split, index):
    """Whether the error names the image that the annotation file lists at ``index``."""
    images = json.load(open(root / 'annotations' / f'instances_{split}.json'))['images']
    return line.split()[3] == str(root / split / images[index]['file_name'])


def test_corrupt_image_in_training_names_file_and_index(corrupt_root, tmp_path):
    """Two data-loader workers, no shuffling: the worker re-raises our error; one line."""
    options = shapes_options(str(corrupt_root)) + ['train_dataloader.sampler.shuffle=False']
    proc = run_tool([PYTHON, 'tools/train.py', SOAK, '--work-dir', str(tmp_path), '--cfg-options',
                     *options], check=False, timeout=300,
                    env=dict(PYTHONPATH=f'{ROOT}:{ROOT}/tests'))
    assert proc.returncode == 1 and 'Traceback' not in proc.stderr, proc.stderr[-3000:]
    # the other worker may be decoding the truncated PNG meanwhile: libpng's own complaint,
    # written as its text and then a newline, can land before our line, even on the same line
    # (ours is one write, so nothing lands inside it)
    ours = 'error: CorruptImageError: '
    lines = [ln[ln.index(ours):] for ln in proc.stderr.splitlines() if ours in ln]
    assert len(lines) == 1, proc.stderr[-3000:]
    last = lines[0]
    assert re.fullmatch(r'error: CorruptImageError: image .*/train/\S+\.png \(dataset index 3\) '
                        r'cannot be decoded: not an image: the file starts with b.garbage!. '
                        r'\(80 bytes\)', last), last
    assert _names_image(last, corrupt_root, 'train', 3), last


def test_corrupt_and_truncated_images_when_testing(corrupt_root, tiny_checkpoint, tmp_path,
                                                  capsys):
    config, checkpoint, _ = tiny_checkpoint
    options = shapes_options(str(corrupt_root))
    line = tool_error('tools/test.py', [config, checkpoint, '--work-dir', tmp_path,
                                        '--cfg-options', *options], capsys)
    assert re.fullmatch(r'error: CorruptImageError: image .*/val/\S+\.png \(dataset index 1\) '
                        r'cannot be decoded: not an image.*', line), line
    assert _names_image(line, corrupt_root, 'val', 1), line
    # the truncated PNG: test the train split, so that index 5 is reached
    options += ['test_dataloader.dataset.ann_file=annotations/instances_train.json',
                'test_dataloader.dataset.data_prefix.img=train/',
                f'test_evaluator.ann_file={corrupt_root}/annotations/instances_train.json',
                'test_dataloader.dataset.indices=[5]']
    line = tool_error('tools/test.py', [config, checkpoint, '--work-dir', tmp_path / 'b',
                                        '--cfg-options', *options], capsys)
    # the dataset's own index, not the position in the subset that ``indices`` selects
    assert re.fullmatch(r'error: CorruptImageError: image .*/train/\S+\.png \(dataset index 5\) '
                        r'cannot be decoded: a truncated or corrupt PNG \(\d+ bytes\)', line), line
    assert _names_image(line, corrupt_root, 'train', 5), line
