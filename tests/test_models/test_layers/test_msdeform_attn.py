"""MSDeformAttn against mmcv's MultiScaleDeformableAttention module and hand-worked values."""
import math

import pytest
import torch
from mmcv.ops import MultiScaleDeformableAttention

from mmdeform.models.layers import DeformableDetrEncoder, MSDeformAttn

SHAPES = torch.tensor([[6, 8], [3, 4]])
START = torch.tensor([0, 48])


def _pair(num_levels=2, seed=0):
    torch.manual_seed(seed)
    ours = MSDeformAttn(embed_dims=32, num_heads=4, num_levels=num_levels, num_points=3)
    ref = MultiScaleDeformableAttention(embed_dims=32, num_heads=4, num_levels=num_levels,
                                        num_points=3, dropout=0.0, batch_first=True)
    with torch.no_grad():  # random weights, so offsets and weights are not the init values
        for p in ours.parameters():
            p.normal_(0, 0.3)
    ref.load_state_dict(ours.state_dict())
    return ours, ref


@pytest.mark.parametrize('ref_dim', [2, 4])
def test_matches_mmcv_module(ref_dim):
    ours, ref = _pair()
    g = torch.Generator().manual_seed(1)
    value = torch.randn(2, 60, 32, generator=g)
    query = torch.randn(2, 5, 32, generator=g)
    pos = torch.randn(2, 5, 32, generator=g)
    refs = torch.rand(2, 5, 2, ref_dim, generator=g)
    mask = torch.zeros(2, 60, dtype=torch.bool)
    mask[1, 40:48] = True
    mask[1, 57:] = True
    out = ours(query + pos, value, refs, SHAPES, START, mask)
    # mmcv adds the identity itself: subtract it
    expected = ref(query, value=value, identity=torch.zeros_like(query), query_pos=pos,
                   key_padding_mask=mask, reference_points=refs, spatial_shapes=SHAPES,
                   level_start_index=START)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


def test_padding_values_are_ignored():
    ours, _ = _pair()
    g = torch.Generator().manual_seed(2)
    value = torch.randn(1, 60, 32, generator=g)
    query = torch.randn(1, 5, 32, generator=g)
    refs = torch.rand(1, 5, 2, 2, generator=g)
    mask = torch.zeros(1, 60, dtype=torch.bool)
    mask[0, 50:] = True
    out = ours(query, value, refs, SHAPES, START, mask)
    value[0, 50:] = 1e3 * torch.randn(10, 32, generator=g)
    torch.testing.assert_close(ours(query, value, refs, SHAPES, START, mask), out)


def test_sampling_locations_by_hand():
    attn = MSDeformAttn(embed_dims=8, num_heads=2, num_levels=2, num_points=2)
    query = torch.zeros(1, 1, 8)  # offsets = bias only
    refs2 = torch.tensor([[[[0.5, 0.25], [0.5, 0.25]]]])
    loc, weights = attn.sampling(query, refs2, SHAPES[:2])
    # head 0 points along +x: offset (k + 1, 0) cells; level 0 is 8 cells wide
    assert loc[0, 0, 0, 0, 1].tolist() == pytest.approx([0.5 + 2 / 8, 0.25])
    # head 1 points along -x (theta = pi), level 1 is 4 wide
    assert loc[0, 0, 1, 1, 0].tolist() == pytest.approx([0.5 - 1 / 4, 0.25])
    assert torch.allclose(weights, torch.full_like(weights, 0.25))  # uniform at init
    refs4 = torch.tensor([[[[0.5, 0.5, 0.2, 0.4], [0.5, 0.5, 0.2, 0.4]]]])
    loc4, _ = attn.sampling(query, refs4, SHAPES[:2])
    # box references: offset / K * wh * 0.5 -> point 2 of head 0: 2 / 2 * 0.2 * 0.5
    assert loc4[0, 0, 0, 0, 1].tolist() == pytest.approx([0.5 + 0.1, 0.5])


def test_sampling_offset_init_is_a_circle_scaled_by_point_index():
    attn = MSDeformAttn(embed_dims=16, num_heads=8, num_levels=1, num_points=3)
    bias = attn.sampling_offsets.bias.view(8, 1, 3, 2)
    for head in range(8):
        theta = 2 * math.pi * head / 8
        direction = torch.tensor([math.cos(theta), math.sin(theta)])
        direction = direction / direction.abs().max()
        for k in range(3):
            torch.testing.assert_close(bias[head, 0, k], direction * (k + 1))


def test_encoder_reference_points_by_hand():
    # one 2x2 level; image 0 unpadded, image 1 valid on the left half only
    ratios = torch.tensor([[[1.0, 1.0]], [[0.5, 1.0]]])
    ref = DeformableDetrEncoder.reference_points([(2, 2)], ratios)
    assert ref.shape == (2, 4, 1, 2)
    assert ref[0, :, 0].tolist() == [[0.25, 0.25], [0.75, 0.25], [0.25, 0.75], [0.75, 0.75]]
    # centres normalised by the valid width (1 cell), then scaled back by the ratio
    # x: (0.5, 1.5) cells / (0.5 * 2 cells) = (0.5, 1.5), times the ratio 0.5
    torch.testing.assert_close(ref[1, :, 0], torch.tensor([[0.25, 0.25], [0.75, 0.25],
                                                           [0.25, 0.75], [0.75, 0.75]]))


def test_recorded_sampling_is_what_was_sampled():
    """The recorded locations and weights, fed to mmcv's reference implementation,
    reproduce the module's output: the visualisation draws what the model used."""
    from mmcv.ops.multi_scale_deform_attn import multi_scale_deformable_attn_pytorch
    ours, _ = _pair()
    g = torch.Generator().manual_seed(3)
    value = torch.randn(1, 60, 32, generator=g)
    query = torch.randn(1, 7, 32, generator=g)
    refs = torch.rand(1, 7, 2, 4, generator=g)
    ours.recording = True
    out = ours(query, value, refs, SHAPES, START)
    locations, weights = ours.last_sampling_locations, ours.last_attention_weights
    assert locations.shape == (1, 7, 4, 2, 3, 2) and weights.shape == (1, 7, 4, 2, 3)
    v = ours.value_proj(value).view(1, 60, 4, 8)
    again = ours.output_proj(multi_scale_deformable_attn_pytorch(v, SHAPES, locations, weights))
    torch.testing.assert_close(out, again)
