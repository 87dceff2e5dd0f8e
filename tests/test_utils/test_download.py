"""Checkpoint downloads through a loopback HTTP server: cache, hash check, errors."""
import functools
import hashlib
import http.server
import json
import os
import re
import socket
import threading

import pytest
import torch
import yaml
from helpers import PYTHON, ROOT, run_tool, shapes_options
from mmdet_reference import build_ours
from mmengine.config import Config

from mmdeform.utils.checkpoint import load_checkpoint_file
from mmdeform.utils.download import ChecksumError, download_checkpoint


class _Handler(http.server.SimpleHTTPRequestHandler):
    requests = []

    def do_GET(self):  # noqa: N802
        type(self).requests.append(self.path)
        super().do_GET()

    def log_message(self, *args):
        pass


@pytest.fixture
def server(tmp_path):
    root = tmp_path / 'served'
    root.mkdir()
    _Handler.requests = []
    handler = functools.partial(_Handler, directory=str(root))
    httpd = http.server.ThreadingHTTPServer(('127.0.0.1', 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield root, f'http://127.0.0.1:{httpd.server_address[1]}', _Handler.requests
    httpd.shutdown()
    httpd.server_close()


def _sha8(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()[:8]


def _serve_checkpoint(root, stem, checkpoint):
    tmp = root / f'{stem}.tmp'
    torch.save(checkpoint, tmp)
    final = root / f'{stem}-{_sha8(tmp)}.pth'
    tmp.rename(final)
    return final.name


def test_download_is_cached_and_verified(server, tmp_path):
    root, base, requests = server
    name = _serve_checkpoint(root, 'weights', dict(state_dict={'w': torch.arange(3.0)}))
    cache = tmp_path / 'cache'
    path = download_checkpoint(f'{base}/{name}', cache_dir=str(cache))
    assert path == str(cache / name)
    assert torch.equal(load_checkpoint_file(path)['state_dict']['w'], torch.arange(3.0))
    assert download_checkpoint(f'{base}/{name}', cache_dir=str(cache)) == path
    assert requests == [f'/{name}']  # fetched once


def test_hash_mismatch_is_refused_and_not_cached(server, tmp_path):
    root, base, _ = server
    torch.save({'w': torch.zeros(1)}, root / 'weights-deadbeef.pth')
    cache = tmp_path / 'cache'
    with pytest.raises(ChecksumError, match='deadbeef'):
        download_checkpoint(f'{base}/weights-deadbeef.pth', cache_dir=str(cache))
    assert not (cache / 'weights-deadbeef.pth').exists()


def test_unreachable_and_missing_urls(server, tmp_path):
    _, base, _ = server
    with pytest.raises(ConnectionError, match=r'HTTP 404.*'):
        download_checkpoint(f'{base}/nothing-here.pth', cache_dir=str(tmp_path))
    with socket.socket() as sock:  # a port with no server behind it
        sock.bind(('127.0.0.1', 0))
        port = sock.getsockname()[1]
    url = f'http://127.0.0.1:{port}/x.pth'
    with pytest.raises(ConnectionError, match=re.escape(url)):
        download_checkpoint(url, cache_dir=str(tmp_path))


SHAPES_DDETR = 'configs/shapes/deformable_detr_refine_two_stage_shapes.py'


def _shapes_model_checkpoint(num_classes=4):
    cfg = Config.fromfile(SHAPES_DDETR)
    cfg.model.bbox_head.num_classes = num_classes
    torch.manual_seed(0)
    model = build_ours(cfg)
    model.init_weights()
    return dict(state_dict=model.state_dict(),
                meta=dict(experiment_name='deformable_detr_refine_two_stage_shapes_20261122_101010'))


def test_test_tool_downloads_verifies_and_evaluates(server, tmp_path, shapes_root):
    root, base, requests = server
    name = _serve_checkpoint(root, 'shapes_ddetr', _shapes_model_checkpoint())
    env = dict(MMDEFORM_CHECKPOINTS=str(tmp_path / 'cache'))
    options = shapes_options(shapes_root) + ['test_dataloader.num_workers=0',
                                             'test_dataloader.persistent_workers=False']
    proc = run_tool([PYTHON, 'tools/test.py',
                     SHAPES_DDETR,
                     f'{base}/{name}', '--work-dir', str(tmp_path / 'wd'), '--cfg-options',
                     *options], env=env)
    assert (tmp_path / 'cache' / name).is_file() and requests == [f'/{name}']
    assert re.search(r'Evaluation of http://127\.0\.0\.1:\d+/' + re.escape(name) +
                     r': coco/bbox_mAP: \d\.\d{4}', proc.stdout)


def test_checkpoint_that_does_not_fit_is_reported(server, tmp_path, shapes_root):
    root, base, _ = server
    name = _serve_checkpoint(root, 'other_classes', _shapes_model_checkpoint(num_classes=7))
    proc = run_tool([PYTHON, 'tools/test.py',
                     SHAPES_DDETR,
                     f'{base}/{name}', '--work-dir', str(tmp_path / 'wd'), '--cfg-options',
                     *shapes_options(shapes_root)],
                    env=dict(MMDEFORM_CHECKPOINTS=str(tmp_path / 'cache')), check=False)
    assert proc.returncode != 0
    err = proc.stderr
    assert 'CheckpointMismatchError' in err
    width = Config.fromfile(SHAPES_DDETR).model.bbox_head.embed_dims
    assert (f'shape of bbox_head.cls_branches.0.weight: checkpoint (7, {width}), '
            f'model (4, {width})') in err
    assert 'made for: deformable_detr_refine_two_stage_shapes.py' in err


def test_publish_model_strips_training_state_and_names_the_hash(tmp_path):
    ckpt = _shapes_model_checkpoint()
    ckpt.update(optimizer=dict(state={}), message_hub=dict(x=1), rng_state=dict(torch=1))
    torch.save(ckpt, tmp_path / 'epoch_10.pth')
    proc = run_tool([PYTHON, 'tools/model_converters/publish_model.py',
                     str(tmp_path / 'epoch_10.pth'), str(tmp_path / 'shapes_ddetr.pth')])
    published = [f for f in os.listdir(tmp_path) if f.startswith('shapes_ddetr-')]
    assert len(published) == 1 and published[0] in proc.stdout
    path = tmp_path / published[0]
    assert published[0] == f'shapes_ddetr-{_sha8(path)}.pth'
    assert set(load_checkpoint_file(str(path))) == {'state_dict', 'meta'}


def test_download_tool_uses_the_index(server, tmp_path):
    root, base, _ = server
    with open(os.path.join(ROOT, 'tests', 'data', 'official_layouts', 'detr_r50.json')) as f:
        layout = json.load(f)['tensors']
    g = torch.Generator().manual_seed(0)
    name = _serve_checkpoint(root, 'detr-r50', dict(
        model={k: torch.randn(s, generator=g) for k, s in layout.items()}))
    index = dict(Models=[dict(Name='detr_r50_official', Config='configs/detr.py',
                              Metadata=dict(Converter='tools/model_converters/official_detr.py'),
                              Results=[dict(Metrics={'box AP': 42.0})],
                              Weights=f'{base}/{name}')])
    (tmp_path / 'index.yml').write_text(yaml.safe_dump(index))
    proc = run_tool([PYTHON, 'tools/misc/download_checkpoint.py', 'detr_r50_official', '--index',
                     str(tmp_path / 'index.yml'), '--out-dir', str(tmp_path / 'out')],
                    env=dict(MMDEFORM_CHECKPOINTS=str(tmp_path / 'cache')))
    assert 'tools/test.py configs/detr.py' in proc.stdout
    cfg = Config.fromfile('configs/detr.py')
    cfg.model.backbone.init_cfg = None
    state = load_checkpoint_file(str(tmp_path / 'out' / 'detr_r50_official.pth'))['state_dict']
    build_ours(cfg).load_state_dict(state, strict=True)


def test_download_tool_converts_the_official_rtdetr_entries(server, tmp_path):
    """The index's RT-DETR entries as they are, their URLs moved to the loopback server: the
    official file (EMA weights, v2 layout) is fetched, converted and loads into the entry's
    config. Every entry names an existing config and the RT-DETR converter."""
    with open(os.path.join(ROOT, 'configs', 'metafile.yml')) as f:
        models = {m['Name']: m for m in yaml.safe_load(f)['Models']}
    rtdetr = {k: m for k, m in models.items() if m.get('In Collection', '').startswith('RT-DETR')}
    assert len(rtdetr) == 10
    for entry in rtdetr.values():
        assert os.path.isfile(os.path.join(ROOT, entry['Config']))
        assert entry['Metadata']['Converter'] == 'tools/model_converters/official_rtdetr.py'
        assert entry['Weights'].startswith('https://github.com/lyuwenyu/storage/releases/')
    root, base, requests = server
    entry = dict(rtdetr['rtdetrv2_r18vd_official'])
    file_name = entry['Weights'].rsplit('/', 1)[1]
    with open(os.path.join(ROOT, 'tests', 'data', 'official_layouts', 'rtdetrv2_r18vd.json')) as f:
        layout = json.load(f)['tensors']
    g = torch.Generator().manual_seed(0)
    ema = {k: torch.randn(s, generator=g) for k, s in layout.items()}
    torch.save(dict(ema=dict(module=ema), model={k: v + 1 for k, v in ema.items()}),
               root / file_name)
    entry['Weights'] = f'{base}/{file_name}'
    (tmp_path / 'index.yml').write_text(yaml.safe_dump(dict(Models=[entry])))
    proc = run_tool([PYTHON, 'tools/misc/download_checkpoint.py', 'rtdetrv2_r18vd_official',
                     '--index', str(tmp_path / 'index.yml'), '--out-dir', str(tmp_path / 'out')],
                    env=dict(MMDEFORM_CHECKPOINTS=str(tmp_path / 'cache')))
    assert requests == [f'/{file_name}']
    assert f'tools/test.py {entry["Config"]}' in proc.stdout
    cfg = Config.fromfile(os.path.join(ROOT, entry['Config']))
    cfg.model.backbone.init_cfg = None
    state = load_checkpoint_file(str(tmp_path / 'out' / 'rtdetrv2_r18vd_official.pth'))
    model = build_ours(cfg)
    model.load_state_dict(state['state_dict'], strict=True)
    assert torch.equal(model.backbone.stem[0].weight, ema['backbone.conv1.conv1_1.conv.weight'])


def test_cache_names_of_file_urls_and_share_links():
    from mmdeform.utils.download import cache_name
    assert cache_name('https://x.org/a/detr-r50-e632da11.pth') == 'detr-r50-e632da11.pth'
    assert cache_name('https://cloud.tsinghua.edu.cn/f/14c5ddae10b642e68089/?dl=1') == \
        '14c5ddae10b642e68089.pth'
    with pytest.raises(ValueError, match='names no file'):
        cache_name('https://x.org/')
