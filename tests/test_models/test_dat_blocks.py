"""DAT's attention blocks against direct per-query computations on small maps."""
import math

import pytest
import torch

from mmdeform.models.backbones.dat_blocks import (DeformableAttention, NeighborhoodAttention,
                                                  WindowAttention)


def _linear(layer, x):
    """A Linear or 1x1 Conv applied to a vector of channels."""
    return layer.weight.reshape(layer.weight.shape[0], -1) @ x + layer.bias


def _bilinear(img, y, x):
    """Sample img (C, H, W) at normalised (y, x) in [-1, 1], align_corners=True, zeros outside."""
    C, H, W = img.shape
    py, px = (y + 1) / 2 * (H - 1), (x + 1) / 2 * (W - 1)
    y0, x0 = math.floor(py), math.floor(px)
    out = torch.zeros(C, dtype=img.dtype)
    for yy, wy in ((y0, 1 - (py - y0)), (y0 + 1, py - y0)):
        for xx, wx in ((x0, 1 - (px - x0)), (x0 + 1, px - x0)):
            if 0 <= yy < H and 0 <= xx < W:
                out += wy * wx * img[:, yy, xx]
    return out


@pytest.mark.parametrize('version, stride, size', [(2, 2, (6, 5)), (1, 1, (4, 5)), (2, 8, (5, 3))])
def test_deformable_attention_matches_per_query_loop(version, stride, size):
    torch.manual_seed(0)
    dim, heads, groups = 8, 4, 2
    attn = DeformableAttention(dim, heads, groups, stride, 3, table_size=(3, 4), version=version)
    with torch.no_grad():
        attn.rpe_table.normal_()
        attn.conv_offset[3].weight.mul_(20)  # offsets of a few pixels, some outside the map
    H, W = size
    x = torch.randn(1, dim, H, W, dtype=torch.float64)
    attn = attn.double()
    with torch.no_grad():
        out = attn(x)[0]
        q = attn.proj_q(x)
        offsets = attn.conv_offset(q.reshape(groups, dim // groups, H, W))  # g, 2, Hk, Wk
    Hk, Wk = offsets.shape[2:]
    assert (Hk, Wk) == (math.ceil(H / stride), math.ceil(W / stride))

    def grid(n, query):  # normalised coordinate of index i, by the papers' formulas
        if version == 1:
            return lambda i: (i + 0.5) / n * 2 - 1
        if n == 1:
            return lambda i: 0.0
        return (lambda i: i / (n - 1) * 2 - 1) if query else (lambda i: (i + 0.5) / (n - 1) * 2 - 1)

    cg, hc, hg = dim // groups, dim // heads, heads // groups
    ref = torch.zeros(dim, H, W, dtype=torch.float64)
    # group gi samples its channels at its own positions; key n holds every group's sample n
    samples = torch.zeros(Hk * Wk, dim, dtype=torch.float64)
    pos = torch.zeros(groups, Hk * Wk, 2, dtype=torch.float64)
    with torch.no_grad():
        for gi in range(groups):
            for i in range(Hk):
                for j in range(Wk):
                    dy, dx = offsets[gi, :, i, j].tolist()
                    if version == 1:
                        dy, dx = 2 * math.tanh(dy) / Hk, 2 * math.tanh(dx) / Wk
                    py, px = grid(Hk, False)(i) + dy, grid(Wk, False)(j) + dx
                    if version == 2:
                        py, px = min(max(py, -1), 1), min(max(px, -1), 1)
                    pos[gi, i * Wk + j] = torch.tensor([py, px], dtype=torch.float64)
                    samples[i * Wk + j, gi * cg:(gi + 1) * cg] = _bilinear(
                        x[0, gi * cg:(gi + 1) * cg], py, px)
        k = torch.stack([_linear(attn.proj_k, s) for s in samples])  # Ns, dim
        v = torch.stack([_linear(attn.proj_v, s) for s in samples])
        table = attn.rpe_table
        for h in range(heads):
            gi = h // hg
            for qi in range(H):
                for qj in range(W):
                    qy, qx = grid(H, True)(qi), grid(W, True)(qj)
                    qv = q[0, h * hc:(h + 1) * hc, qi, qj]
                    logits = torch.stack([
                        qv @ k[n, h * hc:(h + 1) * hc] * hc**-0.5 + _bilinear(
                            table[h:h + 1], (qy - pos[gi, n, 0].item()) / 2,
                            (qx - pos[gi, n, 1].item()) / 2)[0] for n in range(Hk * Wk)])
                    ref[h * hc:(h + 1) * hc, qi, qj] = logits.softmax(0) @ v[:, h * hc:(h + 1) * hc]
        expected = torch.stack([_linear(attn.proj_out, ref[:, i, j]) for i in range(H)
                                for j in range(W)]).T.reshape(dim, H, W)
    torch.testing.assert_close(out, expected, rtol=1e-9, atol=1e-9)


def _window_reference(attn, x):
    """Per query: attention over the real pixels in its (shifted) window and region."""
    _, C, H, W = x.shape
    w, s, nh = attn.window, attn.shift, attn.num_heads
    hc = C // nh
    Hp, Wp = math.ceil(H / w) * w, math.ceil(W / w) * w

    def rolled(p, n):  # coordinate in the padded map after the roll by -s
        return (p - s) % n

    def region(r, n):  # the shift mask's three bands of the rolled padded map
        if not s:
            return 0
        return 0 if r < n - w else (1 if r < n - s else 2)

    qkv = (torch.einsum('oc,chw->ohw', attn.proj_qkv.weight, x[0])
           + attn.proj_qkv.bias[:, None, None])
    q, k, v = qkv.split(C)
    table = attn.relative_position_bias_table
    out = torch.zeros(C, H, W, dtype=x.dtype)
    for qy in range(H):
        for qx in range(W):
            ry, rx = rolled(qy, Hp), rolled(qx, Wp)
            keys = [(ky, kx) for ky in range(H) for kx in range(W)
                    if rolled(ky, Hp) // w == ry // w and rolled(kx, Wp) // w == rx // w
                    and region(rolled(ky, Hp), Hp) == region(ry, Hp)
                    and region(rolled(kx, Wp), Wp) == region(rx, Wp)]
            for h in range(nh):
                sl = slice(h * hc, (h + 1) * hc)
                logits = torch.stack([
                    (q[sl, qy, qx] * hc**-0.5) @ k[sl, ky, kx] + table[
                        (ry % w - rolled(ky, Hp) % w + w - 1) * (2 * w - 1)
                        + (rx % w - rolled(kx, Wp) % w + w - 1), h] for ky, kx in keys])
                values = torch.stack([v[sl, ky, kx] for ky, kx in keys])
                out[sl, qy, qx] = logits.softmax(0) @ values
    return (torch.einsum('oc,chw->ohw', attn.proj_out.weight, out)
            + attn.proj_out.bias[:, None, None])


@pytest.mark.parametrize('shift', [0, 4])
@pytest.mark.parametrize('size', [(7, 14), (9, 12)])
def test_window_attention_matches_masked_attention(shift, size):
    torch.manual_seed(1)
    attn = WindowAttention(8, 2, window=7, shift=shift).double()
    with torch.no_grad():
        attn.relative_position_bias_table.normal_()
    x = torch.randn(1, 8, *size, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(attn(x)[0], _window_reference(attn, x), rtol=1e-7, atol=1e-7)


@pytest.mark.parametrize('backend', ['cpp', 'pytorch'], ids=['cpu_kernel', 'pytorch_path'])
@pytest.mark.parametrize('size', [(9, 11), (4, 8)])
def test_neighborhood_attention_matches_brute_force(size, backend, monkeypatch):
    from mmdeform.ops import NA_KERNEL_AVAILABLE
    if backend == 'cpp' and not NA_KERNEL_AVAILABLE:
        pytest.skip('CPU kernel not built')
    monkeypatch.setenv('MMDEFORM_NA_BACKEND', backend)
    torch.manual_seed(2)
    k, C, nh = 7, 8, 2
    hc = C // nh
    attn = NeighborhoodAttention(C, nh, k).double()
    x = torch.randn(1, C, *size, dtype=torch.float64)
    H0, W0 = size
    H, W = max(H0, k), max(W0, k)
    padded = torch.zeros(C, H, W, dtype=torch.float64)
    padded[:, :H0, :W0] = x[0]  # the official model zero-pads small maps before qkv
    with torch.no_grad():
        qkv = torch.einsum('oc,chw->ohw', attn.qkv.weight, padded) + attn.qkv.bias[:, None, None]
        q, key, v = qkv.split(C)
        expected = torch.zeros(C, H0, W0, dtype=torch.float64)
        for qy in range(H0):
            for qx in range(W0):
                y0 = min(max(qy - k // 2, 0), H - k)
                x0 = min(max(qx - k // 2, 0), W - k)
                keys = [(ky, kx) for ky in range(y0, y0 + k) for kx in range(x0, x0 + k)]
                for h in range(nh):
                    sl = slice(h * hc, (h + 1) * hc)
                    logits = torch.stack([q[sl, qy, qx] * hc**-0.5 @ key[sl, ky, kx]
                                          + attn.rpb[h, k - 1 + ky - qy, k - 1 + kx - qx]
                                          for ky, kx in keys])
                    expected[sl, qy, qx] = logits.softmax(0) @ torch.stack(
                        [v[sl, ky, kx] for ky, kx in keys])
        expected = (torch.einsum('oc,chw->ohw', attn.proj.weight, expected)
                    + attn.proj.bias[:, None, None])
        torch.testing.assert_close(attn(x)[0], expected, rtol=1e-9, atol=1e-9)
