"""Deformable DETR (plain, refine, refine + two-stage) against mmdet 3.3.0's models.

mmdet's model is built from its own config with random weights, every tensor is
perturbed, the checkpoint goes through tools/model_converters/mmdet_to_mmdeform.py
and our model must give the same outputs and training losses on a padded batch of
two images of different sizes.

Set MMDEFORM_TEST_DEVICE=cuda to run our model on the GPU, where MSDeformAttn
uses our Triton kernel (or mmcv's compiled CUDA op), against mmdet's model on the
CPU (mmcv's PyTorch implementation), an independent path (tools/gpu_check.sh).
"""
import pytest
import torch
from helpers import (FLOAT64_SIZES, PYTHON, batch_to, device_under_test, make_batch,
                     preprocess, run_tool)
from mmdet_reference import (assert_gradients_match, assert_losses_match,
                             assert_mutation_is_caught, build_mmdet, build_ours, detach_output,
                             float64_batch, float64_copies, losses_and_backward, mmdet_config,
                             no_detach_inside, perturb)
from mmengine.config import Config

from mmdeform.utils.checkpoint import load_checkpoint_file

DEVICE = device_under_test()
VARIANTS = {
    'deformable': ('deformable_detr/deformable-detr_r50_16xb2-50e_coco.py',
                   'configs/deformable_detr.py'),
    'refine': ('deformable_detr/deformable-detr-refine_r50_16xb2-50e_coco.py',
               'configs/deformable_detr_refine.py'),
    'refine_two_stage': ('deformable_detr/deformable-detr-refine-twostage_r50_16xb2-50e_coco.py',
                         'configs/deformable_detr_refine_two_stage.py'),
}


@pytest.fixture(scope='module', params=sorted(VARIANTS))
def pair(request, tmp_path_factory):
    mmdet_cfg, our_cfg = VARIANTS[request.param]
    ref = build_mmdet(mmdet_config(mmdet_cfg))
    perturb(ref)
    tmp = tmp_path_factory.mktemp(request.param)
    torch.save(dict(state_dict=ref.state_dict(), meta=dict()), tmp / 'mmdet.pth')
    proc = run_tool([PYTHON, 'tools/model_converters/mmdet_to_mmdeform.py', str(tmp / 'mmdet.pth'),
                     str(tmp / 'mmdeform.pth')])
    # the four input projections get the zero bias that mmdet's ChannelMapper lacks
    assert 'filled 4' in proc.stdout and 'unmapped 0' in proc.stdout
    cfg = Config.fromfile(our_cfg)
    cfg.model.backbone.init_cfg = None
    ours = build_ours(cfg)
    ours.load_state_dict(load_checkpoint_file(str(tmp / 'mmdeform.pth'))['state_dict'], strict=True)
    ours.to(DEVICE)
    return request.param, ref, ours


def _cpu(x):
    return None if x is None else x.cpu()


def _mmdet_encoder_proposals(ref, inputs, samples):
    """mmdet returns the two-stage proposals only in training mode: run its steps."""
    feats = ref.extract_feat(inputs)
    enc_in, dec_in = ref.pre_transformer(feats, samples)
    enc_out = ref.forward_encoder(**enc_in)
    ref.training = True  # pre_decoder hands out the proposals only when training
    try:
        _, head_in = ref.pre_decoder(**enc_out)
    finally:
        ref.training = False
    return head_in['enc_outputs_class'], head_in['enc_outputs_coord']


def test_eval_outputs_match(pair):
    name, ref, ours = pair
    ref.eval(), ours.eval()
    inputs, samples = preprocess(ref, *make_batch())
    with torch.no_grad():
        ref_cls, ref_box = ref(inputs, samples, mode='tensor')
        raw = ours(*batch_to(DEVICE, inputs, samples), mode='tensor')
        out = type(raw)(*map(_cpu, raw))
        assert out.all_cls_scores.shape == (6, 2, 300, 80)
        torch.testing.assert_close(out.all_cls_scores, ref_cls, atol=1e-4, rtol=0)
        torch.testing.assert_close(out.all_bbox_preds, ref_box, atol=1e-4, rtol=0)
        if name == 'refine_two_stage':
            enc_cls, enc_box = _mmdet_encoder_proposals(ref, inputs, samples)
            torch.testing.assert_close(out.enc_cls_scores, enc_cls, atol=1e-4, rtol=0)
            torch.testing.assert_close(out.enc_bbox_preds, enc_box, atol=1e-4, rtol=0)
        else:
            assert out.enc_cls_scores is None


def _mutation(name, ours):
    if name == 'deformable':  # no detach in this model: an extra one after decoder layer 2
        return detach_output(ours.decoder.layers[2])
    # the refined reference is detached before it enters the next layer: drop that detach
    return no_detach_inside(ours.decoder)


def test_training_losses_and_gradients_match_in_float64(pair):
    name, ref, ours = pair
    if DEVICE != 'cpu':
        pytest.skip('float64 parity runs on the CPU; on CUDA see test_eval_outputs_match')
    ref, ours = float64_copies(ref, ours)
    # two-stage takes the top 300 of the encoder's cells: FLOAT64_SIZES have 128
    sizes = [] if name == 'refine_two_stage' else [FLOAT64_SIZES]
    inputs, samples = preprocess(ref, *make_batch(*sizes, boxes_per_image=[4, 2]), training=True)
    inputs, samples = float64_batch(inputs, samples)
    ref_losses = losses_and_backward(ref, inputs, samples)
    our_losses = losses_and_backward(ours, inputs, samples)
    assert len(our_losses) == (21 if name == 'refine_two_stage' else 18)
    assert_losses_match(ref_losses, our_losses)
    # the same losses could still hide a detach or a wrong branch: compare gradients
    assert len(assert_gradients_match(ref, ours)) > 250
    assert_mutation_is_caught(ref, ref_losses, ours, inputs, samples, _mutation(name, ours))
