"""tools/analysis_tools/{get_flops,analyze_logs,browse_dataset}.py, run as subprocesses
and checked against hand computations and independent reads of their outputs."""
import glob
import importlib.util
import json
import os
import re

import pytest
from helpers import PYTHON, ROOT, run_tool, shapes_options
from PIL import Image

GET_FLOPS = 'tools/analysis_tools/get_flops.py'
ANALYZE_LOGS = 'tools/analysis_tools/analyze_logs.py'
BROWSE = 'tools/analysis_tools/browse_dataset.py'


def printed_int(text: str, label: str) -> int:
    match = re.search(re.escape(label) + r'[^\n]*?: ([\d,]+)', text)
    assert match, f'{label!r} not in the output:\n{text}'
    return int(match.group(1).replace(',', ''))


def module_row(text: str, name: str) -> int:
    match = re.search(rf'^\s+{re.escape(name)}\s+([\d,]+) \(', text, re.M)
    assert match, f'no per-module row {name!r} in:\n{text}'
    return int(match.group(1).replace(',', ''))


def load_tool(path: str):
    spec = importlib.util.spec_from_file_location(os.path.basename(path)[:-3],
                                                  os.path.join(ROOT, path))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ------------------------------------------------------------------ get_flops
def test_get_flops_msda_and_params_by_hand():
    """Tiny Deformable DETR at 128 x 192: C4, C5 and an extra stride-2 level at
    strides 16, 32, 64 -> 8x12 + 4x6 + 2x3 = 126 tokens; 3 encoder layers
    query all of them, 3 decoder layers 50 queries; L = 3, K = 4 and the width C
    as the config sets it."""
    from mmengine.config import Config
    config = 'tests/data/configs/ddetr_shapes_tiny.py'
    cfg = Config.fromfile(config)
    c = cfg.model.encoder.embed_dims
    assert (cfg.model.encoder.num_layers, cfg.model.decoder.num_layers, cfg.model.num_queries,
            cfg.model.num_feature_levels, cfg.model.encoder.num_points) == (3, 3, 50, 3, 4)
    out = run_tool([PYTHON, GET_FLOPS, config, '--shape', '128', '192']).stdout
    tokens = 8 * 12 + 4 * 6 + 2 * 3
    queries = 3 * tokens + 3 * 50
    per_query = c * 3 * 4 * (4 + 1)  # channels x levels x points x (bilinear taps + weight)
    assert printed_int(out, 'deformable sampling and DAT attention') == queries * per_query
    regular = printed_int(out, 'regular layers')
    assert printed_int(out, 'FLOPs, total') == regular + queries * per_query
    assert '1 FLOP = 1 fused multiply-add' in out

    from mmdeform.registry import MODELS
    cfg.model.backbone.init_cfg = None
    model = MODELS.build(cfg.model)
    assert printed_int(out, 'Parameters') == sum(p.numel() for p in model.parameters())


def test_get_flops_detr_encoder_by_hand():
    """Tiny DETR at 128 x 160: N = 8 x 10 tokens at stride 16, C = 128, FFN 512.
    Per encoder layer: q/k/v/out projections 4NC^2, attention products 2N^2C
    (counted through our scaled_dot_product_attention handle), FFN 2NCF and two
    LayerNorms at mmengine's 5 per element."""
    out = run_tool([PYTHON, GET_FLOPS, 'tests/data/configs/detr_shapes_tiny.py',
                    '--shape', '128', '160']).stdout
    n, c, f = 80, 128, 512
    per_layer = 4 * n * c * c + 2 * n * n * c + 2 * n * c * f + 2 * 5 * n * c
    assert module_row(out, 'encoder') == 3 * per_layer
    assert printed_int(out, 'deformable sampling and DAT attention') == 0


def test_get_flops_r50_config_and_paper_figure():
    """The full R50 Deformable DETR at 256 x 256 (4 levels: 32^2 + 16^2 + 8^2 + 4^2
    tokens, 300 queries, C = 256, K = 4) builds without a download and quotes Table 1."""
    out = run_tool([PYTHON, GET_FLOPS, 'configs/deformable_detr.py',
                    '--shape', '256', '256']).stdout
    assert 'init_cfg = None' in out
    assert 'Paper (Table 1, Deformable DETR): 173 GFLOPs' in out
    tokens = 32 * 32 + 16 * 16 + 8 * 8 + 4 * 4
    assert printed_int(out, 'deformable sampling and DAT attention') == (6 * tokens + 6 * 300) * 256 * 4 * 4 * 5


def test_get_flops_bad_input():
    proc = run_tool([PYTHON, GET_FLOPS, 'configs/no_such_config.py'], check=False)
    assert proc.returncode != 0 and "'configs/no_such_config.py' does not exist" in proc.stderr
    proc = run_tool([PYTHON, GET_FLOPS, 'configs/detr.py', '--shape', '16', '800'], check=False)
    assert proc.returncode != 0 and '--shape 16 800: each side must be at least 32' in proc.stderr


# --------------------------------------------------------------- analyze_logs
@pytest.fixture(scope='module')
def train_log(tiny_checkpoint):
    """The JSON scalar log of the fixture's 2-iteration run (training lines only)."""
    work_dir = os.path.dirname(tiny_checkpoint[1])
    logs = [p for p in glob.glob(os.path.join(work_dir, '*', 'vis_data', '*.json'))
            if not p.endswith('scalars.json')]
    assert len(logs) == 1, logs
    return logs[0]


@pytest.fixture()
def epoch_log(tmp_path):
    """An epoch-based log as mmengine writes it: 2 training lines per epoch, then a
    validation line whose step is the epoch."""
    lines = []
    for epoch in (1, 2):
        for i, t in zip((1, 2), (10.0, 1.0) if epoch == 1 else (2.0, 3.0)):
            it = (epoch - 1) * 2 + i
            lines.append(dict(lr=1e-4, loss=5.0 - it, time=t, data_time=0.1, epoch=epoch,
                              iter=it, step=it))
        lines.append({'coco/bbox_mAP': 0.1 * epoch, 'coco/bbox_mAP_50': 0.2 * epoch,
                      'data_time': 0.1, 'time': 0.5, 'step': epoch})
    path = tmp_path / '20240101_000000.json'
    path.write_text('\n'.join(json.dumps(x) for x in lines) + '\n')
    return str(path)


def test_plot_curve_writes_png(train_log, epoch_log, tmp_path):
    out = tmp_path / 'train.png'
    run_tool([PYTHON, ANALYZE_LOGS, 'plot_curve', train_log, '--keys', 'loss',
              'coco/bbox_mAP', '--out', str(out)])
    out2 = tmp_path / 'sub' / 'epoch.png'
    run_tool([PYTHON, ANALYZE_LOGS, 'plot_curve', epoch_log, epoch_log, '--keys', 'loss',
              'coco/bbox_mAP', 'coco/bbox_mAP_50', '--legend', 'a', 'b', '--out', str(out2)])
    # 8 x 3 inches per key at 100 dpi
    for path, keys in ((out, 2), (out2, 3)):
        assert path.stat().st_size > 0
        with Image.open(path) as image:
            assert image.format == 'PNG'
            assert image.size == (800, 300 * keys)
            image.verify()


def test_plot_curve_axes(epoch_log, train_log):
    """x: the iteration for training keys; for validation keys the epoch in
    epoch-based runs, else the iteration (mmengine writes step 0 there)."""
    tool = load_tool(ANALYZE_LOGS)
    log = tool.load_log(epoch_log)
    assert tool.series(log, 'loss', epoch_log) == ([1, 2, 3, 4], [4.0, 3.0, 2.0, 1.0], 'iter')
    assert tool.series(log, 'time', epoch_log)[0] == [1, 2, 3, 4]  # training lines first
    assert tool.series(log, 'coco/bbox_mAP', epoch_log) == ([1, 2], [0.1, 0.2], 'epoch')
    # the fixture's run: 2 iterations, validated once at the end
    log = tool.load_log(train_log)
    assert [r['step'] for r in log['val']] == [0]
    assert tool.series(log, 'coco/bbox_mAP', train_log) == ([2], [0.0], 'iter')


def test_plot_curve_time_axis(epoch_log, tmp_path):
    """--x-axis time: minutes of logged iteration time. The fixture logs every
    iteration (10, 1, 2, 3 s): 10, 11, 13, 16 s; each validation sits at the last
    training line before it. A log every 5 iterations (2 s, then 4 s per iteration)
    counts each window's iterations: 10 s, then 30 s."""
    tool = load_tool(ANALYZE_LOGS)
    log = tool.load_log(epoch_log)
    xs, ys, label = tool.series(log, 'loss', epoch_log, 'time')
    assert xs == pytest.approx([10 / 60, 11 / 60, 13 / 60, 16 / 60]) and label.endswith('(min)')
    assert tool.series(log, 'coco/bbox_mAP', epoch_log, 'time')[0] == pytest.approx(
        [11 / 60, 16 / 60])
    path = tmp_path / 'windows.json'
    path.write_text('\n'.join(json.dumps(x) for x in (
        dict(loss=2.0, time=2.0, iter=5, step=5, epoch=1),
        dict(loss=1.0, time=4.0, iter=10, step=10, epoch=1),
        {'coco/bbox_mAP': 0.3, 'step': 1})) + '\n')
    log = tool.load_log(str(path))
    assert tool.series(log, 'loss', str(path), 'time')[0] == pytest.approx([10 / 60, 30 / 60])
    assert tool.series(log, 'coco/bbox_mAP', str(path), 'time')[0] == pytest.approx([0.5])
    out = tmp_path / 'time.png'
    run_tool([PYTHON, ANALYZE_LOGS, 'plot_curve', epoch_log, '--keys', 'coco/bbox_mAP',
              '--x-axis', 'time', '--out', str(out)])
    with Image.open(out) as image:
        assert image.size == (800, 300)


def test_plot_curve_missing_key_lists_available(train_log, tmp_path):
    proc = run_tool([PYTHON, ANALYZE_LOGS, 'plot_curve', train_log, '--keys', 'loss',
                     'coco/segm_mAP', '--out', str(tmp_path / 'x.png')], check=False)
    assert proc.returncode != 0
    assert "no key 'coco/segm_mAP'; training keys:" in proc.stderr
    assert re.search(r'training keys: [^;]*\bloss\b[^;]*\blr\b', proc.stderr), proc.stderr
    assert re.search(r'validation keys: [^;]*coco/bbox_mAP\b', proc.stderr), proc.stderr
    assert not (tmp_path / 'x.png').exists()


def test_cal_train_time(epoch_log):
    """Logged times 10, 1, 2, 3: the first (warm-up) window is dropped -> mean 2."""
    out = run_tool([PYTHON, ANALYZE_LOGS, 'cal_train_time', epoch_log]).stdout
    assert 'mean iteration time: 2.0000 s over 3 logged windows' in out


# ------------------------------------------------------------- browse_dataset
def test_browse_dataset_draws_transformed_images(shapes_root, tmp_path):
    """The shapes pipeline resizes (keep ratio) to fit 192 x 192: each PNG has the
    source image's aspect ratio with its long side at 192."""
    out_dir = tmp_path / 'browse'
    proc = run_tool([PYTHON, BROWSE, 'configs/shapes/detr_r18_shapes.py', '--output-dir',
                     str(out_dir), '--max-images', '3', '--cfg-options',
                     *shapes_options(shapes_root)])
    assert 'Wrote 3 image(s)' in proc.stdout
    pngs = sorted(os.listdir(out_dir))
    assert len(pngs) == 3
    for name in pngs:
        with Image.open(os.path.join(shapes_root, 'train', name)) as source:
            w, h = source.size
        scale = 192 / max(w, h)
        with Image.open(out_dir / name) as drawn:
            assert drawn.format == 'PNG'
            assert drawn.size == (int(w * scale + 0.5), int(h * scale + 0.5))
