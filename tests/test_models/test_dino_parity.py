"""DINO against mmdet 3.3.0's ``dino-4scale_r50_8xb2-12e_coco.py``.

mmdet's model is built from its own config (100 queries instead of 900, so that
small images give enough encoder proposals) with random weights, every tensor
is perturbed, the checkpoint goes through tools/model_converters/mmdet_to_mmdeform.py
and loads strictly into configs/dino_4scale_layerwise_heads.py. Eval outputs of
every decoder layer and the encoder proposals must agree to 1e-4; training
losses and gradients too, in float64, with both denoising generators drawing
the same noise (the same seed, and draws of the same order and shapes). The batch is
padded and its second image has no box.
"""
import contextlib

import pytest
import torch
from helpers import PYTHON, make_batch, preprocess, run_tool
from mmdet_reference import (assert_gradients_match, assert_losses_match,
                             assert_mutation_is_caught, build_mmdet, build_ours, float64_batch,
                             float64_copies, losses_and_backward, mmdet_config, perturb)
from mmengine.config import Config

from mmdeform.utils.checkpoint import load_checkpoint_file

NUM_QUERIES = 100


@pytest.fixture(scope='module')
def pair(tmp_path_factory):
    cfg = mmdet_config('dino/dino-4scale_r50_8xb2-12e_coco.py')
    cfg.model.num_queries = NUM_QUERIES
    ref = build_mmdet(cfg)
    perturb(ref)
    tmp = tmp_path_factory.mktemp('dino')
    torch.save(dict(state_dict=ref.state_dict(), meta=dict()), tmp / 'mmdet.pth')
    proc = run_tool([PYTHON, 'tools/model_converters/mmdet_to_mmdeform.py', str(tmp / 'mmdet.pth'),
                     str(tmp / 'mmdeform.pth')])
    assert 'filled 4' in proc.stdout and 'unmapped 0' in proc.stdout
    ours_cfg = Config.fromfile('configs/dino_4scale_layerwise_heads.py')
    ours_cfg.model.backbone.init_cfg = None
    ours_cfg.model.num_queries = NUM_QUERIES
    ours = build_ours(ours_cfg)
    converted = load_checkpoint_file(str(tmp / 'mmdeform.pth'))
    assert converted['meta']['source_format'] == 'mmdet-3.x dino'
    ours.load_state_dict(converted['state_dict'], strict=True)
    return ref, ours


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
        out = ours(inputs, samples, mode='tensor')
        assert out.all_cls_scores.shape == (6, 2, NUM_QUERIES, 80)
        torch.testing.assert_close(out.all_cls_scores, ref_cls, atol=1e-4, rtol=0)
        torch.testing.assert_close(out.all_bbox_preds, ref_box, atol=1e-4, rtol=0)
        enc_cls, enc_box = _mmdet_outputs(ref, inputs, samples)
        torch.testing.assert_close(out.enc_cls_scores, enc_cls, atol=1e-4, rtol=0)
        torch.testing.assert_close(out.enc_bbox_preds, enc_box, atol=1e-4, rtol=0)
        # and the detections
        ref_pred = ref.predict(inputs, samples)
        our_pred = ours.predict(inputs, samples)
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


@pytest.mark.parametrize('boxes_per_image', [[4, 0], [0, 0]])
def test_training_losses_and_gradients_match_in_float64(pair, boxes_per_image):
    ref, ours = float64_copies(*pair)
    inputs, samples = preprocess(ref, *make_batch(boxes_per_image=boxes_per_image),
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
