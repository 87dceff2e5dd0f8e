"""DETR against mmdet 3.3.0's DETR: same outputs and losses after conversion.

With MMDEFORM_TEST_DEVICE=cuda our model runs on the GPU against mmdet's on the CPU
(the eval outputs; the float64 tests stay on the CPU)."""
import copy

import pytest
import torch
from helpers import (FLOAT64_SIZES, PYTHON, batch_to, device_under_test, make_batch,
                     preprocess, run_tool)
from mmdet_reference import (assert_gradients_match, assert_losses_match,
                             assert_mutation_is_caught, build_mmdet, build_ours, detach_output,
                             float64_batch, float64_copies, losses_and_backward, mmdet_config,
                             perturb)
from mmengine.config import Config

from mmdeform.utils.checkpoint import load_checkpoint_file

DEVICE = device_under_test()
on_the_cpu = pytest.mark.skipif(DEVICE != 'cpu', reason='float64 parity runs on the CPU; on '
                                'CUDA, see test_eval_outputs_match')

@pytest.fixture(scope='module')
def detr_pair(tmp_path_factory):
    ref = build_mmdet(mmdet_config('detr/detr_r50_8xb2-150e_coco.py'))
    perturb(ref)
    tmp = tmp_path_factory.mktemp('detr')
    torch.save(dict(state_dict=ref.state_dict(), meta=dict()), tmp / 'mmdet.pth')
    proc = run_tool([PYTHON, 'tools/model_converters/mmdet_to_mmdeform.py', str(tmp / 'mmdet.pth'),
                     str(tmp / 'mmdeform.pth')])
    assert 'unmapped 0' in proc.stdout

    cfg = Config.fromfile('configs/detr.py')
    cfg.model.backbone.init_cfg = None
    ours = build_ours(cfg)
    state = load_checkpoint_file(str(tmp / 'mmdeform.pth'))['state_dict']
    ours.load_state_dict(state, strict=True)
    return ref, ours.to(DEVICE)


def test_eval_outputs_match(detr_pair):
    ref, ours = detr_pair
    ref.eval(), ours.eval()
    inputs, samples = preprocess(ref, *make_batch())
    with torch.no_grad():
        ref_cls, ref_box = ref(inputs, samples, mode='tensor')
        out = ours(*batch_to(DEVICE, inputs, samples), mode='tensor')
    out = type(out)(*(None if x is None else x.cpu() for x in out))
    assert out.all_cls_scores.shape == (6, 2, 100, 81)
    assert out.all_bbox_preds.shape == (6, 2, 100, 4)
    torch.testing.assert_close(out.all_cls_scores, ref_cls, atol=1e-4, rtol=0)
    torch.testing.assert_close(out.all_bbox_preds, ref_box, atol=1e-4, rtol=0)


@on_the_cpu
def test_training_losses_and_gradients_match_in_float64(detr_pair):
    ref, ours = float64_copies(*detr_pair)
    # mmdet keeps the class weights (1 and bg_cls_weight 0.1) in a float32 tensor, so its
    # float64 loss would weigh no-object by 0.100000001; give it the config's 0.1
    ref.bbox_head.loss_cls.class_weight = [1.0] * 80 + [ref.bbox_head.bg_cls_weight]
    inputs, samples = preprocess(ref, *make_batch(FLOAT64_SIZES, boxes_per_image=[4, 2]),
                                 training=True)
    inputs, samples = float64_batch(inputs, samples)
    ref_losses = losses_and_backward(ref, inputs, samples)
    our_losses = losses_and_backward(ours, inputs, samples)
    assert len(our_losses) == 18  # 3 losses x 6 decoder layers
    assert_losses_match(ref_losses, our_losses)
    # the same losses could still hide a detach or a wrong branch: compare gradients
    assert len(assert_gradients_match(ref, ours)) > 200
    # mutation: a detach too many after decoder layer 2
    assert_mutation_is_caught(ref, ref_losses, ours, inputs, samples,
                              detach_output(ours.decoder.layers[2]))


@on_the_cpu
def test_predictions_match_in_float64(detr_pair):
    """The detections (softmax, top-k, boxes in pixels). In float64: in float32 the boxes
    differ by up to 0.024 px at these sizes (normalised outputs 1e-6 apart, times the
    rounding of the pixel scaling), too close to any tolerance tuned to one machine."""
    ref, ours = (copy.deepcopy(m).double().eval() for m in detr_pair)
    inputs, samples = preprocess(ref, *make_batch(seed=3))
    inputs = inputs.double()
    with torch.no_grad():
        ref_pred = ref(inputs, [s.clone() for s in samples], mode='predict')
        our_pred = ours(inputs, [s.clone() for s in samples], mode='predict')
    for r, o in zip(ref_pred, our_pred):
        assert torch.equal(o.pred_instances.labels, r.pred_instances.labels)
        torch.testing.assert_close(o.pred_instances.scores, r.pred_instances.scores, atol=1e-12,
                                   rtol=0)
        # pixels: 1e-12 of boxes up to 160 px, with float64 rounding at 1e-14
        torch.testing.assert_close(o.pred_instances.bboxes, r.pred_instances.bboxes, atol=1e-10,
                                   rtol=0)
