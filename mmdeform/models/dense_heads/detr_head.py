"""DETR's prediction head, set-prediction loss and post-processing."""
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from mmdet.structures import SampleList
from mmdet.structures.bbox import bbox_cxcywh_to_xyxy, bbox_overlaps, bbox_xyxy_to_cxcywh
from mmengine.dist import all_reduce
from mmengine.model import BaseModule
from mmengine.structures import InstanceData
from torch import Tensor, nn

from mmdeform.registry import MODELS, TASK_UTILS
from mmdeform.utils.amp import fp32_in_autocast
from ..layers.mlp import MLP
from ..structures import HeadInputs, HeadOutputs
from ..task_modules import Matching


class GroundTruth:
    """A batch's targets in the form the matching and the losses use.

    Attributes:
        labels: ``B`` tensors ``(G_b,)``.
        boxes: ``B`` tensors ``(G_b, 4)``, cxcywh normalised by the image size.
        img_sizes: ``(B, 4)`` ``(w, h, w, h)`` of each unpadded input image, to go
            back to pixels for the GIoU loss.
        num_boxes: the number of boxes per process averaged over all processes,
            at least 1; a 0-d tensor, so no host synchronisation is needed.
    """

    def __init__(self, batch_data_samples: SampleList, like: Tensor) -> None:
        """``like``: a prediction tensor, whose device the targets take, and its float
        type if wider than float32 (float64 parity tests; never fp16, where pixel
        sizes such as 1066 are not representable)."""
        dtype = torch.promote_types(like.dtype, torch.float32)
        sizes = [s.img_shape[:2] for s in batch_data_samples]
        self.img_sizes = torch.tensor([[w, h, w, h] for h, w in sizes], dtype=dtype,
                                      device=like.device)
        self.labels = [s.gt_instances.labels for s in batch_data_samples]
        self.boxes = [bbox_xyxy_to_cxcywh(s.gt_instances.bboxes) / self.img_sizes[i]
                      for i, s in enumerate(batch_data_samples)]
        num_boxes = torch.tensor(float(sum(len(x) for x in self.labels)), dtype=dtype,
                                 device=like.device)
        all_reduce(num_boxes, op='mean')
        self.num_boxes = num_boxes.clamp(min=1)


@MODELS.register_module()
class DETRHead(BaseModule):
    """A class branch ``Linear(C, num_classes + 1)`` and a 3-layer box MLP, shared by
    every decoder layer, with auxiliary losses on each layer.

    Args:
        num_classes: object classes, without the no-object class.
        embed_dims: the decoder width ``C``.
        bg_cls_weight: the cross-entropy weight of the no-object class.
        loss_cls, loss_bbox, loss_iou: mmdet loss configs (classification,
            L1 on normalised cxcywh, GIoU on pixel xyxy).
        train_cfg: ``dict(assigner=...)``; needed for training only.
        test_cfg: ``dict(max_per_img=100)``.
    """

    def __init__(self,
                 num_classes: int,
                 embed_dims: int = 256,
                 bg_cls_weight: float = 0.1,
                 loss_cls: dict = dict(type='mmdet.CrossEntropyLoss', use_sigmoid=False,
                                       loss_weight=1.0),
                 loss_bbox: dict = dict(type='mmdet.L1Loss', loss_weight=5.0),
                 loss_iou: dict = dict(type='mmdet.GIoULoss', loss_weight=2.0),
                 train_cfg: Optional[dict] = None,
                 test_cfg: Optional[dict] = None,
                 init_cfg: Optional[dict] = None) -> None:
        super().__init__(init_cfg=init_cfg)
        self.num_classes = num_classes
        self.embed_dims = embed_dims
        self.bg_cls_weight = bg_cls_weight
        self.train_cfg = train_cfg
        self.test_cfg = dict(max_per_img=100) if test_cfg is None else test_cfg
        self.assigner = TASK_UTILS.build(train_cfg['assigner']) if train_cfg else None
        self.loss_cls = MODELS.build(self._loss_cls_cfg(dict(loss_cls)))
        self.loss_bbox = MODELS.build(loss_bbox)
        self.loss_iou = MODELS.build(loss_iou)
        self._init_layers()

    def _loss_cls_cfg(self, cfg: dict) -> dict:
        """Give the cross-entropy the no-object weight as its last class weight."""
        cfg['class_weight'] = [1.0] * self.num_classes + [self.bg_cls_weight]
        return cfg

    @property
    def cls_out_channels(self) -> int:
        return self.num_classes + 1

    def _init_layers(self) -> None:
        self.cls_branch = nn.Linear(self.embed_dims, self.cls_out_channels)
        self.reg_branch = MLP(self.embed_dims, self.embed_dims, 4, 3)

    # ---------------------------------------------------------------- forward
    def forward(self, inputs: HeadInputs) -> HeadOutputs:
        """``(D, B, Q, C)`` hidden states -> logits ``(D, B, Q, num_classes + 1)``
        and sigmoid boxes ``(D, B, Q, 4)`` (normalised cxcywh)."""
        hidden = inputs.hidden_states
        return HeadOutputs(self.cls_branch(hidden), self.reg_branch(hidden).sigmoid())

    # ------------------------------------------------------------------- loss
    def loss(self, inputs: HeadInputs, batch_data_samples: SampleList) -> Dict[str, Tensor]:
        return self.set_losses(self(inputs), batch_data_samples)

    @torch.compiler.disable
    def set_losses(self, outputs: HeadOutputs, batch_data_samples: SampleList,
                   **extras) -> Dict[str, Tensor]:
        """The losses of the head's outputs. Eager under ``torch.compile``: the Hungarian
        matching runs in scipy and the targets depend on the data (one graph break, after
        the network)."""
        return self.loss_by_feat(outputs, GroundTruth(batch_data_samples,
                                                      outputs.all_cls_scores), **extras)

    def loss_by_feat(self, outputs: HeadOutputs, gt: GroundTruth) -> Dict[str, Tensor]:
        """The set loss of every decoder layer: the last as ``loss_*``, the others
        as ``d{i}.loss_*``."""
        return self.decoder_losses(outputs.all_cls_scores, outputs.all_bbox_preds, gt)

    def decoder_losses(self, all_cls: Tensor, all_boxes: Tensor,
                       gt: GroundTruth) -> Dict[str, Tensor]:
        matchings = self.assigner.assign(all_cls.detach(), all_boxes.detach(), gt.labels, gt.boxes)
        num_layers = all_cls.shape[0]
        losses = {}
        for layer, (cls, boxes, matching) in enumerate(zip(all_cls, all_boxes, matchings)):
            prefix = '' if layer == num_layers - 1 else f'd{layer}.'
            for name, value in self.set_loss(cls, boxes, matching, gt, gt.labels).items():
                losses[prefix + name] = value
        return losses

    @fp32_in_autocast
    def set_loss(self, cls_scores: Tensor, bbox_preds: Tensor, matching: List[Matching],
                 gt: GroundTruth, gt_labels: List[Tensor]) -> Dict[str, Tensor]:
        """The loss of one set of predictions after matching.

        Args:
            cls_scores: ``(B, Q, cls_out_channels)``.
            bbox_preds: ``(B, Q, 4)`` normalised cxcywh.
            matching: ``B`` matched (query, target) index pairs.
            gt_labels: the class targets (the two-stage encoder loss passes zeros).
        """
        batch_size, num_queries = cls_scores.shape[:2]
        device = cls_scores.device
        # the matching lives on the host: gather (image, query, target in the
        # concatenated targets) there and move it to the device in one copy
        first_target = 0
        index = []
        for i, (labels, m) in enumerate(zip(gt_labels, matching)):
            index.append(torch.stack([torch.full_like(m.query_inds, i), m.query_inds,
                                      m.gt_inds + first_target]))
            first_target += len(labels)
        img_idx, query_idx, target_idx = torch.cat(index, 1).to(device)
        matched_labels = torch.cat(gt_labels)[target_idx]
        matched_boxes = torch.cat(gt.boxes)[target_idx]

        labels = torch.full((batch_size, num_queries), self.num_classes, dtype=torch.long,
                            device=device)
        labels[img_idx, query_idx] = matched_labels
        preds = bbox_preds[img_idx, query_idx]
        ious = self.iou_targets(labels.shape, img_idx, query_idx, preds, matched_boxes)
        loss_cls = self.classification_loss(cls_scores.flatten(0, 1), labels.flatten(),
                                            gt.num_boxes, ious)

        loss_bbox = self.loss_bbox(preds, matched_boxes, avg_factor=gt.num_boxes)
        scale = gt.img_sizes[img_idx]
        loss_iou = self.loss_iou(bbox_cxcywh_to_xyxy(preds) * scale,
                                 bbox_cxcywh_to_xyxy(matched_boxes) * scale,
                                 avg_factor=gt.num_boxes)
        return dict(loss_cls=loss_cls, loss_bbox=loss_bbox, loss_iou=loss_iou)

    def iou_targets(self, shape: Tuple[int, int], img_idx: Tensor, query_idx: Tensor,
                    preds: Tensor, targets: Tensor) -> Optional[Tensor]:
        """For an IoU-aware ``loss_cls`` (``iou_aware``, the varifocal loss): the IoU of
        each matched query's box ``preds`` with its target, without gradient, and 0 at
        the other queries, ``(B * Q,)``. None for other losses."""
        if not getattr(self.loss_cls, 'iou_aware', False):
            return None
        ious = preds.new_zeros(shape)
        ious[img_idx, query_idx] = bbox_overlaps(bbox_cxcywh_to_xyxy(preds.detach()),
                                                 bbox_cxcywh_to_xyxy(targets), is_aligned=True)
        return ious.flatten()

    def classification_loss(self, cls_scores: Tensor, labels: Tensor, num_boxes: Tensor,
                            ious: Optional[Tensor] = None) -> Tensor:
        """Class-weighted mean cross-entropy, as ``F.cross_entropy(weight=...)`` of
        the official DETR: matched queries weigh 1, the others ``bg_cls_weight``."""
        num_pos = (labels < self.num_classes).sum().to(torch.promote_types(cls_scores.dtype,
                                                                     torch.float32))
        avg_factor = num_pos + (labels.numel() - num_pos) * self.bg_cls_weight
        return self.loss_cls(cls_scores, labels, avg_factor=avg_factor.clamp(min=1))

    # -------------------------------------------------------------- inference
    def predict(self, inputs: HeadInputs, batch_data_samples: SampleList,
                rescale: bool = True) -> List[InstanceData]:
        outputs = self(inputs)
        cls_scores = outputs.all_cls_scores[-1]
        bbox_preds = outputs.all_bbox_preds[-1]
        return [self.predict_single(cls_scores[i], bbox_preds[i], sample.metainfo, rescale)
                for i, sample in enumerate(batch_data_samples)]

    def select_topk(self, cls_score: Tensor, max_per_img: int) -> Tuple[Tensor, Tensor, Tensor]:
        """Softmax without the no-object class; the best class of each query and
        the ``max_per_img`` best queries. ``(..., Q, C + 1)`` logits (one image, or a
        batch as the ONNX export runs it) -> ``(..., k)`` scores, labels, query indices."""
        scores, labels = F.softmax(cls_score, dim=-1)[..., :-1].max(-1)
        scores, query_inds = scores.topk(min(max_per_img, scores.shape[-1]))
        return scores, labels.gather(-1, query_inds), query_inds

    def detections(self, cls_score: Tensor, bbox_pred: Tensor, img_h, img_w
                   ) -> Tuple[Tensor, Tensor, Tensor]:
        """The top ``max_per_img`` (query, class) pairs of ``(..., Q, C)`` scores and
        ``(..., Q, 4)`` boxes: ``(..., k, 4)`` xyxy boxes in the pixels of an
        ``img_h x img_w`` input, clamped to it, their scores and labels."""
        scores, labels, query_inds = self.select_topk(cls_score, self.test_cfg['max_per_img'])
        boxes = bbox_pred.gather(-2, query_inds[..., None].expand(*query_inds.shape, 4))
        # torch.tensor keeps a symbolic size symbolic under torch.export
        size = torch.tensor([img_w, img_h] * 2, dtype=boxes.dtype, device=boxes.device)
        boxes = bbox_cxcywh_to_xyxy(boxes) * size
        return torch.minimum(boxes.clamp(min=0), size), scores, labels

    def predict_single(self, cls_score: Tensor, bbox_pred: Tensor, img_meta: dict,
                       rescale: bool) -> InstanceData:
        """Top queries of one image as pixel xyxy boxes (no NMS)."""
        img_h, img_w = img_meta['img_shape'][:2]
        boxes, scores, labels = self.detections(cls_score, bbox_pred, img_h, img_w)
        if rescale:  # by Python floats, which torch.compile keeps symbolic (no recompilation
            # for every new scale); a tensor made of them would be specialised to their values
            scale_w, scale_h = img_meta['scale_factor'][:2]
            boxes[:, 0::2] /= scale_w
            boxes[:, 1::2] /= scale_h
        results = InstanceData()
        results.bboxes = boxes
        results.scores = scores
        results.labels = labels
        return results
