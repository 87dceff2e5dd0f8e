"""DAT's deformable keys over the image.

    visualize_sampling_points.py IMG CONFIG CKPT --dat-stage S --dat-block D

One panel per offset group, as in the DAT paper's figures: the reference grid
(grey rings) and the keys the offset network moved them to (coloured dots,
joined to their reference point), in pixels of the original image. The
positions are the block's own ``sampling_positions`` for this image;
``dat_sampling_points.json`` lists them (x, y per group and key).
"""
import json
import os
import os.path as osp
from typing import Dict

import numpy as np
import torch


def find_block(model, stage: int, block: int):
    from mmdeform.models.backbones.dat_blocks import DeformableAttention
    backbone = model.backbone
    if type(backbone).__name__ != 'DAT':
        raise ValueError(f'the backbone is {type(backbone).__name__}, not DAT: --dat-stage '
                         'draws the keys of DAT\'s deformable blocks')
    if not 0 <= stage < len(backbone.stages):
        raise ValueError(f'--dat-stage {stage}: DAT has stages 0..{len(backbone.stages) - 1}')
    attns = backbone.stages[stage].attns
    deformable = [i for i, a in enumerate(attns) if isinstance(a, DeformableAttention)]
    if block not in deformable:
        raise ValueError(f'--dat-block {block}: the deformable blocks of stage {stage} are '
                         f'{deformable or "none"}')
    return attns[block]


@torch.no_grad()
def record_keys(model, inputs, attn):
    """Run the backbone; return the block's (pos, ref) as (g, Hk, Wk, 2) (y, x) in [-1, 1]
    and its query map size (H, W)."""
    captured = {}

    def hook(module, args):
        x = args[0]
        pos, ref = module.sampling_positions(module.proj_q(x))
        captured.update(pos=pos[:module.num_groups], ref=ref[:module.num_groups],
                        size=tuple(x.shape[2:]))

    handle = attn.register_forward_pre_hook(hook)
    try:
        model.backbone(inputs[:1])
    finally:
        handle.remove()
    return captured['pos'], captured['ref'], captured['size']


def to_pixels(yx: torch.Tensor, size, sample) -> np.ndarray:
    """Normalised (y, x) on an H x W map (align_corners) -> (x, y) pixels of the original
    image. Map pixel j covers input pixels [j s, (j + 1) s), s = padded input / W."""
    H, W = size
    in_h, in_w = sample.batch_input_shape
    scale_w, scale_h = sample.scale_factor
    y = ((yx[..., 0] + 1) / 2 * (H - 1) + 0.5) * in_h / H / scale_h
    x = ((yx[..., 1] + 1) / 2 * (W - 1) + 0.5) * in_w / W / scale_w
    return torch.stack((x, y), -1).double().cpu().numpy()


def draw(image, pos: np.ndarray, ref: np.ndarray, title: str, out: str) -> None:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    groups = pos.shape[0]
    cols = min(groups, 4)
    rows = (groups + cols - 1) // cols
    height = 4 * rows * image.shape[0] / image.shape[1]
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, height), squeeze=False)
    colors = plt.get_cmap('tab10')
    for g in range(rows * cols):
        ax = axes[g // cols][g % cols]
        ax.axis('off')
        if g >= groups:
            continue
        ax.imshow(image)
        p, r = pos[g].reshape(-1, 2), ref[g].reshape(-1, 2)
        ax.plot(np.stack([r[:, 0], p[:, 0]]), np.stack([r[:, 1], p[:, 1]]), '-',
                color=colors(g % 10), lw=0.6, alpha=0.6)
        ax.scatter(r[:, 0], r[:, 1], s=14, facecolors='none', edgecolors='0.85', linewidths=0.8)
        ax.scatter(p[:, 0], p[:, 1], s=12, color=colors(g % 10), edgecolors='k', linewidths=0.3)
        ax.set_xlim(0, image.shape[1])
        ax.set_ylim(image.shape[0], 0)
        ax.set_title(f'group {g}', fontsize=9)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main(args, model, inputs, samples) -> Dict:
    attn = find_block(model, args.dat_stage, args.dat_block)
    pos, ref, size = record_keys(model, inputs, attn)
    sample = samples[0]
    pos_px, ref_px = to_pixels(pos, size, sample), to_pixels(ref, size, sample)
    image = __import__('mmcv').imread(args.img, channel_order='rgb')
    os.makedirs(args.out_dir, exist_ok=True)
    out = osp.join(args.out_dir, f'dat_stage{args.dat_stage}_block{args.dat_block}.png')
    Hk, Wk = pos.shape[1:3]
    draw(image, pos_px, ref_px, f'DAT stage {args.dat_stage}, block {args.dat_block}: '
         f'{Hk}x{Wk} keys per group on a {size[0]}x{size[1]} map', out)
    dump = dict(stage=args.dat_stage, block=args.dat_block, map_size=list(size),
                key_grid=[Hk, Wk], png=out, points=pos_px.tolist(), references=ref_px.tolist())
    with open(osp.join(args.out_dir, 'dat_sampling_points.json'), 'w') as f:
        json.dump(dump, f)
    print(f'Wrote {out}')
    return dump
