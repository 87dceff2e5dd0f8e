"""tools/analysis_tools/visualize_sampling_points.py draws the model's own sampling locations."""
import json
import os

import numpy as np
import torch
from helpers import PYTHON, run_tool
from PIL import Image


def _model_sampling(config, checkpoint, img):
    """Independently of the tool: record the last decoder layer's and encoder layer's sampling."""
    from mmcv.transforms import Compose
    from mmdet.apis import init_detector
    from mmdet.utils import get_test_pipeline_cfg
    from mmengine.config import Config
    cfg = Config.fromfile(config)
    model = init_detector(cfg, checkpoint, device='cpu')
    data = Compose(get_test_pipeline_cfg(cfg))(dict(img_path=img, img_id=0))
    data = model.data_preprocessor(dict(inputs=[data['inputs']],
                                        data_samples=[data['data_samples']]), False)
    dec = model.decoder.layers[-1].cross_attn
    enc = model.encoder.layers[-1].self_attn
    dec.recording = enc.recording = True
    with torch.no_grad():
        model(data['inputs'], data['data_samples'], mode='tensor')
    return data['data_samples'][0], dec.last_sampling_locations[0], enc.last_sampling_locations[0]


def test_points_are_the_models_sampling_locations(tiny_checkpoint, shapes_root, tmp_path):
    config, checkpoint, options = tiny_checkpoint
    img = os.path.join(shapes_root, 'val', '000001.png')
    run_tool([PYTHON, 'tools/analysis_tools/visualize_sampling_points.py', img, config, checkpoint,
              '--topk', '2', '--pixel', '40', '30', '--out-dir', str(tmp_path)])
    with open(tmp_path / 'sampling_points.json') as f:
        dump = json.load(f)
    assert len(dump['objects']) == 2
    for entry in dump['objects'] + [dump['encoder']]:
        png = Image.open(entry['png'])
        assert png.size[0] > 100 and png.size[1] > 100

    sample, dec_loc, enc_loc = _model_sampling(config, checkpoint, img)
    pad_h, pad_w = sample.batch_input_shape
    scale = np.array(sample.scale_factor)
    for entry in dump['objects']:
        expected = dec_loc[entry['query']].double().numpy() * np.array([pad_w, pad_h]) / scale
        np.testing.assert_allclose(np.array(entry['points']), expected, rtol=1e-6, atol=1e-4)
        assert np.array(entry['points']).shape == (8, 3, 4, 2)  # heads, levels, points, xy
    # the encoder query of the finest level whose cell holds pixel (40, 30)
    h, w = pad_h // 16 + (pad_h % 16 > 0), pad_w // 16 + (pad_w % 16 > 0)  # level 0: stride 16
    row, col = int(30 * scale[1] / pad_h * h), int(40 * scale[0] / pad_w * w)
    assert dump['encoder']['query_index'] == row * w + col
    expected = enc_loc[row * w + col].double().numpy() * np.array([pad_w, pad_h]) / scale
    np.testing.assert_allclose(np.array(dump['encoder']['points']), expected, rtol=1e-6, atol=1e-4)


def test_detr_is_refused(tmp_path, shapes_root):
    import torch as _torch
    from mmdet_reference import build_ours
    from mmengine.config import Config
    cfg = Config.fromfile('configs/shapes/detr_r18_shapes.py')
    _torch.save(dict(state_dict=build_ours(cfg).state_dict()), tmp_path / 'detr.pth')
    proc = run_tool([PYTHON, 'tools/analysis_tools/visualize_sampling_points.py',
                     os.path.join(shapes_root, 'val', '000001.png'),
                     'configs/shapes/detr_r18_shapes.py', str(tmp_path / 'detr.pth'),
                     '--out-dir', str(tmp_path / 'out')], check=False)
    assert proc.returncode != 0 and 'has no deformable attention' in proc.stderr
