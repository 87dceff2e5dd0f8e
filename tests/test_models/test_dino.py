"""DINO's switches: look-forward-twice gradients, query selection, denoising off,
and the build-time checks."""
import pytest
import torch
from helpers import make_batch, preprocess
from mmdet_reference import build_ours
from mmengine.config import Config

SIZES = ((120, 160), (96, 128))


def _model(**model_options):
    cfg = Config.fromfile('configs/shapes/dino_shapes.py')
    cfg.merge_from_dict({f'model.{key}': value for key, value in model_options.items()})
    torch.manual_seed(0)
    model = build_ours(cfg)
    model.init_weights()
    with torch.no_grad():  # the box branches start at zero: give them weights
        for branch in model.bbox_head.reg_branches:
            branch.layers[-1].weight.normal_(0, 0.1)
    return model


def _per_layer_heads(**options):
    return _model(bbox_head=dict(share_pred_layer=False), **options)


@pytest.mark.parametrize('look_forward_twice', [True, False])
def test_look_forward_twice_gradient(look_forward_twice):
    """The boxes of layer i+1 reach layer i's box branch only through the reference
    that layer i refined, which look-forward-twice leaves attached."""
    model = _per_layer_heads(look_forward_twice=look_forward_twice, dn_cfg=None)
    model.eval()
    inputs, samples = preprocess(model, *make_batch(sizes=SIZES, num_classes=4))
    out = model(inputs, samples, mode='tensor')
    for layer in range(2):
        params = list(model.bbox_head.reg_branches[layer].parameters())
        grads = torch.autograd.grad(out.all_bbox_preds[layer + 1].sum(), params,
                                    retain_graph=True, allow_unused=True)
        norm = sum(0.0 if g is None else g.abs().sum().item() for g in grads)
        if look_forward_twice:
            assert norm > 1e-6, layer
        else:
            assert norm == 0.0, layer
    # either way, layer i's own boxes train its branch
    grads = torch.autograd.grad(out.all_bbox_preds[0].sum(),
                                list(model.bbox_head.reg_branches[0].parameters()))
    assert sum(g.abs().sum() for g in grads) > 0


def test_shared_heads_are_one_module_and_the_proposal_head_is_separate():
    model = _model(bbox_head=dict(share_pred_layer=True))  # the official DINO's heads
    head = model.bbox_head
    assert len(head.cls_branches) == 4  # 3 decoder layers + the encoder proposals
    assert head.cls_branches[0] is head.cls_branches[2]
    assert head.reg_branches[1] is head.reg_branches[2]
    assert head.cls_branches[3] is not head.cls_branches[0]
    assert head.reg_branches[3] is not head.reg_branches[0]


@pytest.mark.parametrize('query_selection', ['mixed', 'pure', 'static'])
def test_query_selection_modes_train(query_selection):
    model = _model(query_selection=query_selection,
                   as_two_stage=query_selection != 'static')
    model.train()
    inputs, samples = preprocess(model, *make_batch(sizes=SIZES, boxes_per_image=[2, 1],
                                                    num_classes=4), training=True)
    losses = model(inputs, samples, mode='loss')
    assert all(torch.isfinite(v) for v in losses.values())
    assert ('enc_loss_cls' in losses) == (query_selection != 'static')
    assert 'dn_loss_cls' in losses and 'd1.dn_loss_iou' in losses
    assert hasattr(model, 'anchor_embedding') == (query_selection == 'static')
    assert hasattr(model, 'query_embedding') == (query_selection != 'pure')
    assert hasattr(model, 'pos_trans_fc') == (query_selection == 'pure')
    assert hasattr(model.decoder, 'ref_point_head') == (query_selection != 'pure')


def test_denoising_off_has_no_denoising_losses_or_embedding():
    model = _model(dn_cfg=None)
    model.train()
    inputs, samples = preprocess(model, *make_batch(sizes=SIZES, num_classes=4), training=True)
    losses = model(inputs, samples, mode='loss')
    assert not any('dn_' in k for k in losses) and len(losses) == 3 * 4
    assert model.dn_query_generator is None


def test_empty_batch_gives_zero_denoising_losses_and_finite_gradients():
    model = _model()
    model.train()
    inputs, samples = preprocess(model, *make_batch(sizes=SIZES, boxes_per_image=[0, 0],
                                                    num_classes=4), training=True)
    losses = model(inputs, samples, mode='loss')
    dn = {k: v for k, v in losses.items() if 'dn_' in k}
    assert len(dn) == 9 and all(v.item() == 0 for v in dn.values())
    sum(losses.values()).backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


def test_build_errors_name_the_numbers():
    cfg = Config.fromfile('configs/dino_4scale.py')
    cfg.model.backbone.init_cfg = None
    cfg.model.bbox_head.num_classes = 91
    cfg.model.dn_cfg.num_label_embeddings = 80
    with pytest.raises(ValueError, match=r'num_classes=91 .*num_label_embeddings=80'):
        build_ours(cfg)
    cfg.model.dn_cfg.num_label_embeddings = None
    cfg.model.query_selection = 'static'
    with pytest.raises(ValueError, match='as_two_stage follows from query_selection'):
        build_ours(cfg)
    cfg.model.query_selection = 'anchors'
    with pytest.raises(ValueError, match="query_selection must be one of"):
        build_ours(cfg)


def test_all_switches_off_is_refine_two_stage_deformable_detr():
    """No denoising, no look-forward-twice, pure query selection (and Deformable DETR's
    per-layer heads and inverse-sigmoid clamp): a refine + two-stage DeformableDETR
    checkpoint loads strictly and gives the same outputs and losses."""
    cfg = Config.fromfile('configs/shapes/deformable_detr_refine_two_stage_shapes.py')
    torch.manual_seed(0)
    ddetr = build_ours(cfg)
    ddetr.init_weights()
    with torch.no_grad():
        for p in ddetr.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    cfg.merge_from_dict({
        'model.type': 'DINO', 'model.dn_cfg': None, 'model.look_forward_twice': False,
        'model.query_selection': 'pure', 'model.decoder.reference_eps': 1e-5,
        'model.bbox_head.type': 'DINOHead', 'model.bbox_head.share_pred_layer': False,
        'model.bbox_head.reference_eps': 1e-5})
    dino = build_ours(cfg)
    dino.load_state_dict(ddetr.state_dict(), strict=True)
    inputs, samples = preprocess(ddetr, *make_batch(sizes=SIZES, boxes_per_image=[3, 1],
                                                    num_classes=4), training=True)
    ddetr.eval(), dino.eval()
    with torch.no_grad():
        ref, out = ddetr(inputs, samples, mode='tensor'), dino(inputs, samples, mode='tensor')
    for a, b in zip(ref, out):
        torch.testing.assert_close(b, a, atol=1e-6, rtol=0)
    ddetr.train(), dino.train()
    ref_losses = ddetr(inputs, samples, mode='loss')
    our_losses = dino(inputs, samples, mode='loss')
    assert set(ref_losses) == set(our_losses)
    for key in ref_losses:
        torch.testing.assert_close(our_losses[key], ref_losses[key], atol=1e-6, rtol=0)
