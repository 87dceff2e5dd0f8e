"""Sine positional encoding against mmdet's and against a hand-computed value."""
import math

import pytest
import torch
from mmdet.models.layers import SinePositionalEncoding as MMDetSine

from mmdeform.models.layers import SinePositionalEncoding


@pytest.mark.parametrize('offset', [0.0, -0.5])
def test_matches_mmdet_with_padding(offset):
    mask = torch.zeros(2, 7, 9, dtype=torch.bool)
    mask[1, 5:, :] = True
    mask[1, :, 6:] = True
    ours = SinePositionalEncoding(num_feats=16, normalize=True, offset=offset)(mask)
    ref = MMDetSine(num_feats=16, normalize=True, offset=offset)(mask)
    torch.testing.assert_close(ours, ref)


def test_hand_computed_value():
    # one image 1 x 2, no padding, normalised: x_embed at column 1 = 2 / (2 + eps) * 2pi
    enc = SinePositionalEncoding(num_feats=4, temperature=100, normalize=True, eps=0.0)
    pos = enc(torch.zeros(1, 1, 2, dtype=torch.bool))
    assert pos.shape == (1, 8, 1, 2)
    x = 2 * math.pi  # column 1, the last one
    # x channels are 4..7: sin(x / 100^(0/4)), cos(x / 100^(0/4)), sin(x / 100^(2/4)), cos(...)
    expected = [math.sin(x), math.cos(x), math.sin(x / 10), math.cos(x / 10)]
    torch.testing.assert_close(pos[0, 4:, 0, 1], torch.tensor(expected), atol=1e-6, rtol=0)
    # y channels 0..3 at row 0 of a one-row image: y = 1 / 1 * 2pi
    torch.testing.assert_close(pos[0, :4, 0, 0], torch.tensor(expected), atol=1e-6, rtol=0)


def test_padding_does_not_change_the_valid_region():
    small = SinePositionalEncoding(num_feats=8)(torch.zeros(1, 4, 5, dtype=torch.bool))
    mask = torch.ones(1, 6, 8, dtype=torch.bool)
    mask[:, :4, :5] = False
    padded = SinePositionalEncoding(num_feats=8)(mask)
    torch.testing.assert_close(padded[..., :4, :5], small)
