"""DINO's head: the Deformable DETR head plus the denoising losses."""
import copy
from typing import Dict, List, Optional

import torch
from mmdet.structures import SampleList
from mmdet.structures.bbox import bbox_cxcywh_to_xyxy
from mmengine.dist import all_reduce
from torch import Tensor, nn

from mmdeform.registry import MODELS
from mmdeform.utils.amp import fp32_in_autocast
from ..layers.mlp import MLP
from ..structures import DenoisingMeta, HeadInputs, HeadOutputs
from .deformable_detr_head import DeformableDETRHead
from .detr_head import GroundTruth


@MODELS.register_module()
class DINOHead(DeformableDETRHead):
    """Class and box branches for every decoder layer and the encoder proposals.

    Args:
        share_pred_layer: one class Linear and one box MLP shared by all decoder
            layers (the official DINO), or one pair per layer (mmdet). The
            encoder proposals always have their own pair.
        reference_eps: the inverse-sigmoid clamp of the references in the
            predictions (1e-3 official, 1e-5 mmdet).
        Others: see :class:`DeformableDETRHead`. The proposals are trained on
        every class; the first ``dn_meta.num_queries`` queries of a training
        batch are the denoising ones and get their own losses (``dn_loss_*``).
    """
    class_agnostic_proposals = False

    def __init__(self, *args, share_pred_layer: bool = True, reference_eps: float = 1e-3,
                 **kwargs) -> None:
        self.reference_eps = reference_eps
        super().__init__(*args, share_pred_layer=share_pred_layer, **kwargs)

    def _init_layers(self) -> None:
        if not self.share_pred_layer:
            return super()._init_layers()
        cls_branch = nn.Linear(self.embed_dims, self.cls_out_channels)
        reg_branch = MLP(self.embed_dims, self.embed_dims, 4, 3)
        num_decoder = self.num_pred_layer - int(self.as_two_stage)
        cls_branches, reg_branches = [cls_branch] * num_decoder, [reg_branch] * num_decoder
        if self.as_two_stage:
            cls_branches.append(copy.deepcopy(cls_branch))
            reg_branches.append(copy.deepcopy(reg_branch))
        self.cls_branches = nn.ModuleList(cls_branches)
        self.reg_branches = nn.ModuleList(reg_branches)

    # ------------------------------------------------------------------- loss
    def loss(self, inputs: HeadInputs, batch_data_samples: SampleList) -> Dict[str, Tensor]:
        return self.set_losses(self(inputs), batch_data_samples, meta=inputs.dn_meta)

    def loss_by_feat(self, outputs: HeadOutputs, gt: GroundTruth,
                     meta: Optional[DenoisingMeta] = None) -> Dict[str, Tensor]:
        """The matching queries' set losses, then the denoising queries' (``meta``)."""
        if meta is None:
            return super().loss_by_feat(outputs, gt)
        num_dn = meta.num_queries
        matching = outputs._replace(all_cls_scores=outputs.all_cls_scores[:, :, num_dn:],
                                    all_bbox_preds=outputs.all_bbox_preds[:, :, num_dn:])
        losses = super().loss_by_feat(matching, gt)
        losses.update(self.denoising_losses(outputs.all_cls_scores[:, :, :num_dn],
                                            outputs.all_bbox_preds[:, :, :num_dn], gt, meta))
        return losses

    @fp32_in_autocast
    def denoising_losses(self, dn_cls: Tensor, dn_boxes: Tensor, gt: GroundTruth,
                         meta: DenoisingMeta) -> Dict[str, Tensor]:
        """Every layer's loss on its ``P`` denoising queries ``(D, B, P, ...)``: the
        positives must give back their box and class, the negatives (and the
        padding slots) no object. Normalised by the number of positives
        averaged over processes (``groups * boxes``)."""
        img_idx, query_idx, targets = self._denoising_targets(gt, meta, dn_cls.device)
        labels = torch.full(dn_cls.shape[1:3], self.num_classes, dtype=torch.long,
                            device=dn_cls.device)
        target_labels = torch.cat([lbl[keep] for lbl, keep in zip(gt.labels, meta.gt_indices)])
        target_boxes = torch.cat([box[keep] for box, keep in zip(gt.boxes, meta.gt_indices)])
        labels[img_idx, query_idx] = target_labels[targets]
        matched = target_boxes[targets]
        num_pos = torch.tensor(float(len(targets)), device=dn_cls.device)
        all_reduce(num_pos, op='mean')
        num_pos = num_pos.clamp(min=1)
        scale = gt.img_sizes[img_idx]
        losses = {}
        for layer, (cls, boxes) in enumerate(zip(dn_cls, dn_boxes)):
            prefix = '' if layer == len(dn_cls) - 1 else f'd{layer}.'
            if cls.shape[1] == 0:  # no box in the whole batch: zero losses, still in the graph
                zero = cls.sum() * 0 + boxes.sum() * 0
                values = dict(loss_cls=zero, loss_bbox=zero, loss_iou=zero)
            else:
                preds = boxes[img_idx, query_idx]
                ious = self.iou_targets(labels.shape, img_idx, query_idx, preds, matched)
                values = dict(
                    loss_cls=self.classification_loss(cls.flatten(0, 1), labels.flatten(),
                                                      num_pos, ious),
                    loss_bbox=self.loss_bbox(preds, matched, avg_factor=num_pos),
                    loss_iou=self.loss_iou(bbox_cxcywh_to_xyxy(preds) * scale,
                                           bbox_cxcywh_to_xyxy(matched) * scale,
                                           avg_factor=num_pos))
            losses.update({f'{prefix}dn_{name}': value for name, value in values.items()})
        return losses

    @staticmethod
    def _denoising_targets(gt: GroundTruth, meta: DenoisingMeta, device) -> List[Tensor]:
        """(image, query, target) of every positive denoising query; the target
        indexes the batch's denoised targets concatenated."""
        index, first = [], 0
        for b, keep in enumerate(meta.gt_indices):
            slot = torch.arange(len(keep), device=device)
            groups = torch.arange(meta.num_groups, device=device)[:, None]
            query = (groups * 2 * meta.max_targets + slot).flatten()
            target = (slot + first).repeat(meta.num_groups)
            index.append(torch.stack([torch.full_like(query, b), query, target]))
            first += len(keep)
        return torch.cat(index, 1).unbind(0)

    def predict(self, inputs: HeadInputs, batch_data_samples: SampleList, rescale: bool = True):
        if inputs.dn_meta is not None:
            raise ValueError('DINOHead.predict: the inputs carry denoising queries; predict '
                             'with the model in eval mode')
        return super().predict(inputs, batch_data_samples, rescale)
