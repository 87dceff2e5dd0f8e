"""DINO against mmdet 3.3.0's ``dino-4scale_r50_8xb2-12e_coco.py``.

mmdet's model is built from its own config (100 queries instead of 900, so that
small images give enough encoder proposals; one float64 test at 900) with random
weights, every tensor is perturbed, the checkpoint goes through
tools/model_converters/mmdet_to_mmdeform.py and loads strictly into
configs/dino_4scale_layerwise_heads.py. Eval outputs of every decoder layer and
the encoder proposals must agree to 1e-4 in float32; training losses and
gradients in float64, with both denoising generators drawing the same noise (the
same seed, and draws of the same order and shapes). The batch is padded and its
second image has no box.

With MMDEFORM_TEST_DEVICE=cuda our model runs on the GPU against mmdet's on the CPU
(the eval outputs and detections at 100 queries; the float64 tests stay on the CPU).
"""
import contextlib

import pytest
import torch
from helpers import (FLOAT64_SIZES, PYTHON, batch_to, device_under_test, make_batch,
                     preprocess, run_tool)
from mmdet_reference import (assert_gradients_match, assert_losses_match,
                             assert_mutation_is_caught, build_mmdet, build_ours, float64_batch,
                             float64_copies, losses_and_backward, mmdet_config, perturb)
from mmengine.config import Config

from mmdeform.converters.mmdet import convert_mmdet
from mmdeform.utils.checkpoint import load_checkpoint_file

NUM_QUERIES = 100
DEVICE = device_under_test()
on_the_cpu = pytest.mark.skipif(DEVICE != 'cpu', reason='float64 parity runs on the CPU; on '
                                'CUDA, see test_eval_outputs_match')


def _build_models(num_queries, num_layers=6):
    """mmdet's DINO with perturbed random weights, and ours (weights not loaded yet)."""
    cfg = mmdet_config('dino/dino-4scale_r50_8xb2-12e_coco.py')
    ours_cfg = Config.fromfile('configs/dino_4scale_layerwise_heads.py')
    ours_cfg.model.backbone.init_cfg = None
    for c in (cfg, ours_cfg):
        c.model.num_queries = num_queries
        c.model.encoder.num_layers = c.model.decoder.num_layers = num_layers
    ref = build_mmdet(cfg)
    perturb(ref)
    return ref, build_ours(ours_cfg)


@pytest.fixture(scope='module')
def pair(tmp_path_factory):
    ref, ours = _build_models(NUM_QUERIES)
    tmp = tmp_path_factory.mktemp('dino')
    torch.save(dict(state_dict=ref.state_dict(), meta=dict()), tmp / 'mmdet.pth')
    proc = run_tool([PYTHON, 'tools/model_converters/mmdet_to_mmdeform.py', str(tmp / 'mmdet.pth'),
                     str(tmp / 'mmdeform.pth')])
    assert 'filled 4' in proc.stdout and 'unmapped 0' in proc.stdout
    converted = load_checkpoint_file(str(tmp / 'mmdeform.pth'))
    assert converted['meta']['source_format'] == 'mmdet-3.x dino'
    ours.load_state_dict(converted['state_dict'], strict=True)
    return ref, ours.to(DEVICE)


@pytest.fixture(scope='module')
def pair_900_float64():
    """At the real 900 queries, with two encoder and two decoder layers (the query
    selection sits between them; the tests at 100 queries cover all six), converted
    in-process (the fixture above tests the tool)."""
    ref, ours = _build_models(900, num_layers=2)
    ours.load_state_dict(convert_mmdet(ref.state_dict(), {})[0], strict=True)
    return ref.double().eval(), ours.double().eval()


def _mmdet_outputs(ref, inputs, samples):
    """mmdet returns the encoder proposals only in training mode: run its steps."""
    feats = ref.extract_feat(inputs)
    enc_in, dec_in = ref.pre_transformer(feats, samples)
    enc_out = ref.forward_encoder(**enc_in)
    ref.training = True  # pre_decoder hands out the proposals only when training
    ref.dn_query_generator.training = True
    try:
        _, head_in = ref.pre_decoder(**enc_out, batch_data_samples=samples)
    finally:
        ref.training = False
    return head_in['enc_outputs_class'], head_in['enc_outputs_coord']


def test_eval_outputs_match(pair):
    ref, ours = pair
    ref.eval(), ours.eval()
    inputs, samples = preprocess(ref, *make_batch(boxes_per_image=[3, 0]))
    with torch.no_grad():
        ref_cls, ref_box = ref(inputs, samples, mode='tensor')
        out = ours(*batch_to(DEVICE, inputs, samples), mode='tensor')
        out = type(out)(*(None if x is None else x.cpu() for x in out))
        assert out.all_cls_scores.shape == (6, 2, NUM_QUERIES, 80)
        torch.testing.assert_close(out.all_cls_scores, ref_cls, atol=1e-4, rtol=0)
        torch.testing.assert_close(out.all_bbox_preds, ref_box, atol=1e-4, rtol=0)
        enc_cls, enc_box = _mmdet_outputs(ref, inputs, samples)
        torch.testing.assert_close(out.enc_cls_scores, enc_cls, atol=1e-4, rtol=0)
        torch.testing.assert_close(out.enc_bbox_preds, enc_box, atol=1e-4, rtol=0)
        # and the detections
        ref_pred = ref.predict(inputs, samples)
        our_pred = [o.cpu() for o in ours.predict(*batch_to(DEVICE, inputs, samples))]
        for r, o in zip(ref_pred, our_pred):
            torch.testing.assert_close(o.pred_instances.scores, r.pred_instances.scores,
                                       atol=1e-4, rtol=0)
            torch.testing.assert_close(o.pred_instances.bboxes, r.pred_instances.bboxes,
                                       atol=1e-2, rtol=0)  # pixels


@contextlib.contextmanager
def look_forward_twice_off(model):
    model.decoder.look_forward_twice = False
    try:
        yield
    finally:
        model.decoder.look_forward_twice = True


@on_the_cpu
@pytest.mark.parametrize('boxes_per_image', [[4, 0], [0, 0]])
def test_training_losses_and_gradients_match_in_float64(pair, boxes_per_image):
    ref, ours = float64_copies(*pair)
    inputs, samples = preprocess(ref, *make_batch(FLOAT64_SIZES, boxes_per_image=boxes_per_image),
                                 training=True)
    inputs, samples = float64_batch(inputs, samples)
    # the same seed: both denoising generators draw the same noise in the same order
    ref_losses = losses_and_backward(ref, inputs, samples)
    our_losses = losses_and_backward(ours, inputs, samples)
    # 6 matching layers, 6 denoising layers and the encoder proposals, 3 losses each
    assert len(our_losses) == 39
    assert_losses_match(ref_losses, our_losses)
    if sum(boxes_per_image) == 0:
        assert all(our_losses[k].item() == 0 for k in our_losses if 'dn_' in k)
    else:
        assert our_losses['dn_loss_bbox'].item() > 0
    assert len(assert_gradients_match(ref, ours)) > 300
    if sum(boxes_per_image):
        assert_mutation_is_caught(ref, ref_losses, ours, inputs, samples,
                                  look_forward_twice_off(ours))


# The real 900 queries on two small padded images (1700 feature cells over the four levels):
# the first fills the batch; the second has 747 valid cells, so the top-900 takes padded ones.
SMALL_SIZES = ((256, 320), (160, 224))


def _recorded(monkeypatch, model, method):
    """Make ``model.<method>`` keep its last result in the returned dict, under 'out'."""
    store, call = {}, getattr(model, method)

    def record(*args, **kwargs):
        store['out'] = call(*args, **kwargs)
        return store['out']

    monkeypatch.setattr(model, method, record)
    return store


@on_the_cpu
def test_eval_outputs_match_at_900_queries(pair_900_float64, monkeypatch):
    """Padded cells are masked as mmdet and the official DINO do (zero memory, inf box,
    no mask on the score) and are picked when fewer than 900 cells are valid. In float64,
    so that both rank the proposals alike: in float32 the two implementations' proposal
    scores differ by rounding (2e-6), more than the gaps between 900 ranked scores (3e-7
    here), two anchors can go to each other's query, and the outputs of those two queries
    then differ by about 1 (docs/differences.md)."""
    ref, ours = pair_900_float64
    inputs, samples = preprocess(ref, *make_batch(SMALL_SIZES, boxes_per_image=[3, 2]))
    inputs = inputs.double()
    ref_props = _recorded(monkeypatch, ref, 'gen_encoder_output_proposals')
    our_props = _recorded(monkeypatch, ours, 'encoder_proposals')
    with torch.no_grad():
        ref_cls, ref_box = ref(inputs, samples, mode='tensor')
        out = ours(inputs, samples, mode='tensor')
        layer = ref.decoder.num_layers
        ref_scores = ref.bbox_head.cls_branches[layer](ref_props['out'][0]).max(-1)[0]
        our_scores = ours.bbox_head.cls_branches[layer](our_props['out'][0]).max(-1)[0]
    invalid = ref_props['out'][1].isinf().any(-1)
    assert torch.equal(our_props['out'][1].isinf().any(-1), invalid)
    assert invalid.sum(1).tolist() == [0, 953]  # padding only: no border cell at these sizes
    ref_top, our_top = ref_scores.topk(900).indices, our_scores.topk(900).indices
    picked_invalid = invalid.gather(1, ref_top)
    assert torch.equal(invalid.gather(1, our_top), picked_invalid)
    assert picked_invalid.sum(1).tolist() == [0, 410]
    # the valid proposals: the same ones in the same order (the padded ones tie exactly,
    # so which of them goes to which query is torch.topk's choice; their boxes are equal)
    assert torch.equal(our_top[~picked_invalid], ref_top[~picked_invalid])
    padded = ref_scores[1, invalid[1]]
    assert (padded == padded[0]).all()  # their memory is zeroed: one score for all
    assert (our_scores[1, invalid[1]] - padded).abs().max() < 1e-12
    valid_scores = ref_scores[1, ref_top[1, ~picked_invalid[1]]]
    assert valid_scores.diff().abs().min() < 1e-6  # a near-tie that float32 may swap
    # float64: 1.2e-14 seen
    torch.testing.assert_close(out.all_cls_scores, ref_cls, atol=1e-9, rtol=0)
    torch.testing.assert_close(out.all_bbox_preds, ref_box, atol=1e-9, rtol=0)
