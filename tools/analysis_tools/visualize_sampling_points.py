"""Draw where Deformable DETR looks: the sampling points of its deformable attention.

    python tools/analysis_tools/visualize_sampling_points.py IMG CONFIG CHECKPOINT \\
        [--topk 3] [--layer -1] [--pixel X Y] [--enc-layer -1] [--enc-level 0] [--out-dir DIR]

For each of the top-k predicted objects, one PNG shows the object's box, its
reference point (or box) in the chosen decoder layer, and every sampling
location of every head and level of that layer's cross-attention: one colour
per head, one marker per level, dot size and opacity following the attention
weight. With ``--pixel X Y`` another PNG shows the encoder's sampling
locations, across all levels, of the query at that image pixel.

The positions drawn are the model's own ``sampling_locations`` (recorded by
``MSDeformAttn``), mapped from normalised coordinates of the padded feature
maps to pixels of the original image; ``sampling_points.json`` lists them.

With a DAT backbone, ``--dat-stage S --dat-block D`` draws instead the keys of
that deformable backbone block: its reference grid and the deformed points,
one panel per offset group (see ``dat_sampling_points.py``).
"""
import argparse
import json
import os
import os.path as osp
import sys
from typing import Dict, List

import numpy as np
import torch

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
sys.path.insert(0, ROOT)

LEVEL_MARKERS = ['o', 's', '^', 'D', 'v', 'P']


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('img', help='image file')
    p.add_argument('config')
    p.add_argument('checkpoint')
    p.add_argument('--topk', type=int, default=3, help='objects to draw')
    p.add_argument('--layer', type=int, default=-1, help='decoder layer (negative: from the end)')
    p.add_argument('--pixel', type=float, nargs=2, metavar=('X', 'Y'),
                   help='also draw the encoder sampling points of the query at this pixel')
    p.add_argument('--enc-layer', type=int, default=-1, help='encoder layer for --pixel')
    p.add_argument('--enc-level', type=int, default=0,
                   help='feature level whose query at --pixel is drawn (0 = finest)')
    p.add_argument('--dat-stage', type=int, help='DAT backbone: draw the keys of this stage')
    p.add_argument('--dat-block', type=int, default=1,
                   help='with --dat-stage: the deformable block in that stage')
    p.add_argument('--out-dir', default='outputs/sampling_points')
    p.add_argument('--device', default='cpu')
    return p.parse_args(argv)


def load_model(config: str, checkpoint: str, device: str):
    from mmdet.apis import init_detector

    from mmdeform.models.layers import MSDeformAttn
    from mmdeform.utils import register_all_modules
    register_all_modules()
    for path in (config, checkpoint):
        if '://' not in path and not osp.isfile(path):
            raise FileNotFoundError(f'{path!r} does not exist')
    model = init_detector(config, checkpoint, device=device)
    if not any(isinstance(m, MSDeformAttn) for m in model.modules()):
        raise ValueError(f'{config} has no deformable attention (MSDeformAttn): sampling '
                         'points exist only for Deformable DETR models')
    return model


def prepare(model, img: str):
    """The test pipeline's input for one image file, on the model's device."""
    from mmcv.transforms import Compose
    from mmdet.utils import get_test_pipeline_cfg
    if not osp.isfile(img):
        raise FileNotFoundError(f'image {img!r} does not exist')
    pipeline = Compose(get_test_pipeline_cfg(model.cfg))
    data = pipeline(dict(img_path=img, img_id=0))
    data = model.data_preprocessor(dict(inputs=[data['inputs']], data_samples=[data['data_samples']]),
                                   False)
    return data['inputs'], data['data_samples']


@torch.no_grad()
def record_sampling(model, inputs, samples, dec_layer: int, enc_layer: int):
    """Run the model once, recording the chosen layers' sampling.

    Returns the head outputs, the decoder layer's references ``(1, Q, 2|4)`` and
    its recorded cross-attention, and the encoder layer's self-attention, each
    as ``(locations (1, Nq, M, L, K, 2), weights (1, Nq, M, L, K))``.
    """
    decoder_attn = model.decoder.layers[dec_layer].cross_attn
    encoder_attn = model.encoder.layers[enc_layer].self_attn
    captured = {}

    def grab_references(module, args, output):
        captured['references'] = output[1]

    for attn in (decoder_attn, encoder_attn):
        attn.recording = True
    hook = model.decoder.register_forward_hook(grab_references)
    try:
        outputs = model(inputs, samples, mode='tensor')
    finally:
        hook.remove()
        for attn in (decoder_attn, encoder_attn):
            attn.recording = False
    num_layers = len(model.decoder.layers)
    references = captured['references'][dec_layer % num_layers]
    return (outputs, references,
            (decoder_attn.last_sampling_locations, decoder_attn.last_attention_weights),
            (encoder_attn.last_sampling_locations, encoder_attn.last_attention_weights))


def to_image_pixels(normalised: torch.Tensor, sample, padded: bool) -> np.ndarray:
    """Normalised (x, y) pairs -> pixels of the original image.

    ``padded``: normalised over the padded batch input, as sampling locations
    are (a location ``u`` of level ``l`` is ``u * W_l`` cells of ``stride_l``
    pixels, and the padded input is ``W_l * stride_l`` wide). Otherwise over
    the unpadded input, as references and predicted boxes are.
    """
    h, w = sample.batch_input_shape if padded else sample.img_shape[:2]
    scale_w, scale_h = sample.scale_factor
    xy = normalised.detach().cpu().double().numpy().copy()
    xy[..., 0] *= w / scale_w
    xy[..., 1] *= h / scale_h
    return xy


def top_objects(outputs, model, topk: int):
    """Indices, scores and labels of the best queries of the last decoder layer."""
    logits = outputs.all_cls_scores[-1][0]
    if logits.shape[-1] == model.bbox_head.num_classes:  # sigmoid classification
        scores, labels = logits.sigmoid().max(-1)
    else:  # softmax with a no-object class
        scores, labels = logits.softmax(-1)[..., :-1].max(-1)
    scores, queries = scores.topk(min(topk, scores.numel()))
    return queries.tolist(), scores.tolist(), labels[queries].tolist()


def _draw_points(ax, points: np.ndarray, weights: np.ndarray, head_colors):
    """``points``: (M, L, K, 2) pixels; ``weights``: (M, L, K)."""
    num_heads, num_levels = points.shape[:2]
    wmax = max(float(weights.max()), 1e-6)
    for m in range(num_heads):
        for lv in range(num_levels):
            w = weights[m, lv] / wmax
            ax.scatter(points[m, lv, :, 0], points[m, lv, :, 1], s=8 + 120 * w,
                       c=[head_colors[m]], alpha=np.clip(0.25 + 0.75 * w, 0, 1),
                       marker=LEVEL_MARKERS[lv % len(LEVEL_MARKERS)], linewidths=0.3,
                       edgecolors='white')


def _legend(ax, num_heads, num_levels, head_colors):
    from matplotlib.lines import Line2D
    handles = [Line2D([], [], marker='o', ls='', color=head_colors[m], label=f'head {m}')
               for m in range(num_heads)]
    handles += [Line2D([], [], marker=LEVEL_MARKERS[lv % len(LEVEL_MARKERS)], ls='', color='gray',
                       label=f'level {lv}') for lv in range(num_levels)]
    ax.legend(handles=handles, fontsize=6, loc='upper left', bbox_to_anchor=(1.01, 1.0),
              frameon=False)


def draw(image: np.ndarray, title: str, points, weights, out: str, box=None, reference=None):
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    num_heads, num_levels = points.shape[:2]
    head_colors = plt.get_cmap('tab10')(np.arange(num_heads) % 10)
    h, w = image.shape[:2]
    fig, ax = plt.subplots(figsize=(6.4, 6.4 * h / w + 0.3), dpi=110)
    ax.imshow(image)
    if box is not None:
        x1, y1, x2, y2 = box
        ax.add_patch(plt.Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, ec='lime', lw=1.5))
    if reference is not None:
        ax.plot(reference[0], reference[1], marker='*', ms=14, color='yellow', mec='black')
        if len(reference) == 4:
            cx, cy, rw, rh = reference
            ax.add_patch(plt.Rectangle((cx - rw / 2, cy - rh / 2), rw, rh, fill=False, ec='yellow',
                                       ls='--', lw=1))
    _draw_points(ax, points, weights, head_colors)
    _legend(ax, num_heads, num_levels, head_colors)
    ax.set_xlim(0, w)
    ax.set_ylim(h, 0)
    ax.set_title(title, fontsize=8)
    ax.axis('off')
    fig.savefig(out, bbox_inches='tight')
    plt.close(fig)


def encoder_query_index(enc_pixel, sample, spatial_shapes, level_start_index, level: int) -> int:
    """The flattened index of the level-``level`` cell containing an original-image pixel."""
    pad_h, pad_w = sample.batch_input_shape
    scale_w, scale_h = sample.scale_factor
    h, w = (int(v) for v in spatial_shapes[level])
    x, y = enc_pixel[0] * scale_w, enc_pixel[1] * scale_h  # into the resized input
    col = min(int(x / pad_w * w), w - 1)
    row = min(int(y / pad_h * h), h - 1)
    return int(level_start_index[level]) + row * w + col


def main(argv=None) -> Dict[str, List]:
    from mmengine.utils import ProgressBar
    args = parse_args(argv)
    model = load_model(args.config, args.checkpoint, args.device)
    inputs, samples = prepare(model, args.img)
    if args.dat_stage is not None:
        sys.path.insert(0, osp.dirname(osp.abspath(__file__)))
        import dat_sampling_points
        return dat_sampling_points.main(args, model, inputs, samples)
    sample = samples[0]
    outputs, references, (dec_loc, dec_w), (enc_loc, enc_w) = record_sampling(
        model, inputs, samples, args.layer, args.enc_layer)
    image = __import__('mmcv').imread(args.img, channel_order='rgb')
    classes = model.dataset_meta.get('classes', [])
    os.makedirs(args.out_dir, exist_ok=True)
    dump = dict(objects=[], encoder=None)
    queries, scores, labels = top_objects(outputs, model, args.topk)
    bar = ProgressBar(len(queries))
    for rank, (q, score, label) in enumerate(zip(queries, scores, labels)):
        points = to_image_pixels(dec_loc[0, q], sample, padded=True)
        weights = dec_w[0, q].cpu().numpy()
        ref_pix = to_image_pixels(references[0, q].view(-1, 2), sample, padded=False)
        ref_pix = ref_pix.reshape(-1).tolist()
        cx, cy, bw, bh = to_image_pixels(outputs.all_bbox_preds[-1][0, q].view(2, 2), sample,
                                         padded=False).reshape(-1).tolist()
        box = [cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2]
        name = classes[label] if label < len(classes) else str(label)
        out = osp.join(args.out_dir, f'object_{rank}_query{q}.png')
        draw(image, f'query {q}: {name} {score:.2f}, decoder layer {args.layer}', points, weights,
             out, box=box, reference=ref_pix)
        dump['objects'].append(dict(query=q, score=score, label=label, png=out, box=box,
                                    reference=ref_pix, points=points.tolist(),
                                    weights=weights.tolist()))
        bar.update()
    print()
    if args.pixel is not None:
        enc = model.pre_transformer(model.extract_feat(inputs), samples)
        index = encoder_query_index(args.pixel, sample, enc.spatial_shapes.tolist(),
                                    enc.level_start_index.tolist(), args.enc_level)
        points = to_image_pixels(enc_loc[0, index], sample, padded=True)
        weights = enc_w[0, index].cpu().numpy()
        out = osp.join(args.out_dir, f'encoder_pixel_{int(args.pixel[0])}_{int(args.pixel[1])}.png')
        draw(image, f'encoder layer {args.enc_layer}: query at pixel {args.pixel} '
             f'(level {args.enc_level})', points, weights, out, reference=list(args.pixel))
        dump['encoder'] = dict(pixel=list(args.pixel), query_index=index, png=out,
                               points=points.tolist(), weights=weights.tolist())
    with open(osp.join(args.out_dir, 'sampling_points.json'), 'w') as f:
        json.dump(dump, f)
    print(f'Wrote {len(dump["objects"]) + (dump["encoder"] is not None)} PNGs to {args.out_dir}')
    return dump


if __name__ == '__main__':
    main()
