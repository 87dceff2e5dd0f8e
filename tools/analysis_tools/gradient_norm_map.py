"""What the detector looks at: Fig. 5 of the Deformable DETR paper.

    python tools/analysis_tools/gradient_norm_map.py IMG CONFIG CHECKPOINT [--topk 3]
        [--out-dir outputs/gradient_norm] [--score-thr 0.0] [--device cpu] [--cfg-options K=V ...]

For each of the ``topk`` best predictions of the image (last decoder layer of
``model(..., mode='tensor')``, ranked by the head's own scores: sigmoid for
Deformable DETR, softmax without the no-object class for DETR), the gradient
of five scalars with respect to the network input:

* ``x, y, w, h``: the box centre and size **in pixels of the network input**
  (the resized image: normalised cxcywh times its width/height);
* ``score``: the class probability of the predicted class.

Gradients follow the model's own graph: with box refinement or two stages the
references passed between decoder layers are detached (as in the official
code), so those paths are not in the maps.

The input is the data preprocessor's output (resized, normalised by the
config's mean/std, RGB), so a map is ``|d scalar / d normalised pixel|``: the
L2 norm over the 3 colour channels, per pixel. Multiplying by 1/std (about
1/57) gives the gradient per 0-255 intensity step. Each map is cropped to the
unpadded image, resized to the original image and shown scaled to its own
maximum (printed in the title), next to the image with the box.

Writes ``OUT_DIR/<image stem>_obj<i>.png``, one row of 6 panels per object.
"""
import argparse
import os
import os.path as osp
import sys
from typing import List, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
sys.path.insert(0, ROOT)

ITEMS = ('x', 'y', 'w', 'h', 'score')


def parse_args(argv=None):
    from mmengine.config import DictAction
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('img', help='image file')
    p.add_argument('config', help='config file')
    p.add_argument('checkpoint', help='checkpoint file')
    p.add_argument('--topk', type=int, default=3, help='how many predictions to explain')
    p.add_argument('--out-dir', default='outputs/gradient_norm', help='where the PNGs go')
    p.add_argument('--score-thr', type=float, default=0.0,
                   help='explain only predictions scoring at least this')
    p.add_argument('--device', default='cpu', help='e.g. cpu, cuda:0')
    p.add_argument('--cfg-options', nargs='+', action=DictAction,
                   help='override config settings')
    args = p.parse_args(argv)
    if args.topk < 1:
        p.error(f'--topk must be at least 1, got {args.topk}')
    return args


# ------------------------------------------------------------------ the maths
def uses_sigmoid(head) -> bool:
    """Deformable DETR's head has one logit per class (sigmoid); DETR's one more,
    the no-object class (softmax)."""
    return head.cls_out_channels == head.num_classes


def class_probabilities(head, logits: Tensor) -> Tensor:
    """``(..., cls_out_channels)`` logits -> ``(..., num_classes)`` probabilities,
    as the head scores its predictions."""
    if uses_sigmoid(head):
        return logits.sigmoid()
    return logits.softmax(-1)[..., :head.num_classes]


def top_predictions(head, logits: Tensor, k: int,
                    score_thr: float = 0.0) -> List[Tuple[int, int, float]]:
    """The ``k`` best distinct queries of one image scoring at least ``score_thr``.

    Args:
        logits: ``(Q, cls_out_channels)`` of the last decoder layer.
    Returns:
        ``(query index, class index, score)`` per prediction, best first. A query
        appears once, with its best class (a sigmoid head may rank one query twice).
    """
    probs = class_probabilities(head, logits.detach())
    scores, labels = probs.max(-1)
    order = scores.argsort(descending=True)
    return [(int(q), int(labels[q]), float(scores[q])) for q in order[:k]
            if scores[q] >= score_thr]


def item_scalars(model, inputs: Tensor, data_samples, queries: Sequence[Tuple[int, int]]) -> Tensor:
    """The explained scalars of each prediction, differentiable in ``inputs``.

    Args:
        inputs: ``(1, 3, H, W)`` preprocessed image (padded batch of one).
        queries: ``(query index, class index)`` pairs.
    Returns:
        ``(K, 5)``: x, y, w, h in network-input pixels and the class probability.
    """
    outputs = model(inputs, data_samples, mode='tensor')
    logits = outputs.all_cls_scores[-1][0]  # (Q, cls_out_channels)
    boxes = outputs.all_bbox_preds[-1][0]  # (Q, 4) normalised cxcywh
    h, w = data_samples[0].img_shape[:2]
    scale = boxes.new_tensor([w, h, w, h])
    q = torch.tensor([q for q, _ in queries], device=boxes.device)
    c = torch.tensor([c for _, c in queries], device=boxes.device)
    score = class_probabilities(model.bbox_head, logits[q]).gather(1, c[:, None])
    return torch.cat([boxes[q] * scale, score], dim=1)


def output_gradients(model, inputs: Tensor, data_samples,
                     queries: Sequence[Tuple[int, int]]) -> Tuple[Tensor, Tensor]:
    """d(each of :func:`item_scalars`)/d(inputs), one backward pass per scalar.

    The model should be in eval mode (BatchNorm statistics fixed, no dropout),
    so that an image's maps do not depend on the rest of a batch.
    Returns:
        The ``(K, 5)`` scalars and their ``(K, 5, 3, H, W)`` gradients with respect
        to the preprocessed input.
    """
    # a fresh leaf: the preprocessor's output may carry history or be shared
    leaf = inputs.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        scalars = item_scalars(model, leaf, data_samples, queries)
        flat = scalars.flatten()
        grads = [torch.autograd.grad(value, leaf, retain_graph=i < flat.numel() - 1)[0][0]
                 for i, value in enumerate(flat)]
    return scalars.detach(), torch.stack(grads).reshape(*scalars.shape, *leaf.shape[1:])


def gradient_norm_maps(grads: Tensor, img_shape: Tuple[int, int],
                       ori_shape: Tuple[int, int]) -> Tensor:
    """``(..., 3, H_pad, W_pad)`` gradients -> ``(..., H_ori, W_ori)`` per-pixel L2 norms
    over the colour channels, cropped to the unpadded input ``img_shape`` and
    resized (bilinear) to the original image."""
    norms = grads.norm(dim=-3)[..., :img_shape[0], :img_shape[1]]
    lead = norms.shape[:-2]
    resized = F.interpolate(norms.reshape(-1, 1, *norms.shape[-2:]), size=tuple(ori_shape),
                            mode='bilinear', align_corners=False)
    return resized.reshape(*lead, *ori_shape)


# --------------------------------------------------------------- the pipeline
def prepare_input(model, img_path: str):
    """The image through the config's test pipeline and the model's preprocessor,
    as ``inference_detector`` does. Returns ``((1, 3, H, W) inputs, [data sample])``."""
    from mmcv.transforms import Compose
    from mmdet.utils import get_test_pipeline_cfg
    pipeline = Compose(get_test_pipeline_cfg(model.cfg.copy()))
    packed = pipeline(dict(img_path=img_path, img_id=0))
    data = model.data_preprocessor(dict(inputs=[packed['inputs']],
                                        data_samples=[packed['data_samples']]), False)
    return data['inputs'], data['data_samples']


def box_in_original(box: Tensor, meta: dict) -> List[float]:
    """Network-input-pixel cxcywh -> original-image xyxy (as the head's ``rescale``)."""
    cx, cy, w, h = box.tolist()
    sx, sy = meta['scale_factor'][:2]
    return [(cx - w / 2) / sx, (cy - h / 2) / sy, (cx + w / 2) / sx, (cy + h / 2) / sy]


def draw_row(image, maps: Tensor, box_xyxy: List[float], title: str, out_file: str) -> None:
    """One figure row: the image with the box, then the 5 gradient-norm maps."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    fig, axes = plt.subplots(1, 1 + len(ITEMS), figsize=(3 * (1 + len(ITEMS)), 3.4))
    x0, y0, x1, y1 = box_xyxy
    axes[0].imshow(image)
    axes[0].set_title(title, fontsize=9)
    for ax, name, heat in zip(axes[1:], ITEMS, maps):
        peak = float(heat.max())
        # each map scaled to its own maximum, as in the paper's figure
        ax.imshow(heat.numpy() / peak if peak > 0 else heat.numpy(), cmap='inferno',
                  vmin=0, vmax=1)
        unit = 'px' if name != 'score' else 'prob'
        ax.set_title(f'|d {name} ({unit}) / d input|\nmax {peak:.3g}', fontsize=9)
    for ax in axes:
        ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False,
                               edgecolor='cyan' if ax is not axes[0] else 'lime', linewidth=1))
        ax.axis('off')
    fig.tight_layout()
    fig.savefig(out_file, dpi=100)
    plt.close(fig)


def main(argv=None):
    args = parse_args(argv)
    for path, what in ((args.img, 'image'), (args.config, 'config'),
                       (args.checkpoint, 'checkpoint')):
        if not osp.isfile(path):
            raise FileNotFoundError(f'{what} file {path!r} does not exist')

    import mmcv
    from mmdet.apis import init_detector
    from mmengine.utils import ProgressBar

    from mmdeform.utils import register_all_modules
    register_all_modules()

    model = init_detector(args.config, args.checkpoint, device=args.device,
                          cfg_options=args.cfg_options)  # eval mode
    inputs, data_samples = prepare_input(model, args.img)
    meta = data_samples[0].metainfo
    with torch.no_grad():
        logits = model(inputs, data_samples, mode='tensor').all_cls_scores[-1][0]
    predictions = top_predictions(model.bbox_head, logits, args.topk, args.score_thr)
    if not predictions:
        best = float(class_probabilities(model.bbox_head, logits).max())
        raise ValueError(f'no prediction of {args.img!r} scores at least --score-thr '
                         f'{args.score_thr} (the best scores {best:.3f})')

    classes = (model.dataset_meta or {}).get('classes')
    image = mmcv.imread(args.img, channel_order='rgb')
    stem = osp.splitext(osp.basename(args.img))[0]
    os.makedirs(args.out_dir, exist_ok=True)
    written = []
    bar = ProgressBar(len(predictions))
    for i, (query, label, score) in enumerate(predictions):
        # one object at a time: the graph of one forward pass holds ~all activations
        scalars, grads = output_gradients(model, inputs, data_samples, [(query, label)])
        maps = gradient_norm_maps(grads[0], meta['img_shape'][:2], meta['ori_shape'][:2]).cpu()
        box = scalars[0, :4].cpu()
        name = classes[label] if classes and label < len(classes) else f'class {label}'
        out_file = osp.join(args.out_dir, f'{stem}_obj{i}.png')
        draw_row(image, maps, box_in_original(box, meta),
                 f'#{i} query {query}: {name} {score:.3f}', out_file)
        written.append(out_file)
        bar.update()
    print(f'\nWrote {len(written)} gradient-norm map(s) to {osp.abspath(args.out_dir)}: '
          + ', '.join(osp.basename(f) for f in written))


if __name__ == '__main__':
    main()
