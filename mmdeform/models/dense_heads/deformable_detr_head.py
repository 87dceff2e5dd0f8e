"""Deformable DETR's head: sigmoid focal classification and boxes relative to the references."""
import copy
import math
from typing import Dict, Optional, Tuple

import torch
from torch import Tensor, nn

from mmdeform.registry import MODELS
from ..layers.deformable_detr_layers import inverse_sigmoid
from ..layers.mlp import MLP
from ..structures import HeadInputs, HeadOutputs
from .detr_head import DETRHead, GroundTruth


@MODELS.register_module()
class DeformableDETRHead(DETRHead):
    """Per decoder layer: a class branch ``Linear(C, num_classes)`` and a 3-layer
    box MLP whose output is added to the layer's reference in inverse-sigmoid
    space.

    Args:
        share_pred_layer: one pair of branches for all layers (plain Deformable
            DETR); otherwise one pair per layer (refinement). The detector sets it.
        as_two_stage: one more pair for the encoder proposals, trained
            class-agnostically on the first logit. The detector sets it.
        num_pred_layer: decoder layers.
        Others: see :class:`DETRHead`; ``loss_cls`` is a sigmoid focal loss.
    """
    # the clamp of inverse_sigmoid on the references (the official 1e-5)
    reference_eps = 1e-5
    # two-stage proposals are trained as one objectness class (DINO: on every class)
    class_agnostic_proposals = True

    def __init__(self, *args, share_pred_layer: bool = True, as_two_stage: bool = False,
                 num_pred_layer: int = 6,
                 loss_cls: dict = dict(type='mmdet.FocalLoss', use_sigmoid=True, gamma=2.0,
                                       alpha=0.25, loss_weight=2.0),
                 **kwargs) -> None:
        self.share_pred_layer = share_pred_layer
        self.as_two_stage = as_two_stage
        self.num_pred_layer = num_pred_layer + 1 if as_two_stage else num_pred_layer
        super().__init__(*args, loss_cls=loss_cls, **kwargs)

    def _loss_cls_cfg(self, cfg: dict) -> dict:
        if not cfg.get('use_sigmoid', False):
            raise ValueError(f'{type(self).__name__} needs a sigmoid classification loss '
                             f'(use_sigmoid=True), got {cfg}')
        return cfg

    @property
    def cls_out_channels(self) -> int:
        return self.num_classes

    def _init_layers(self) -> None:
        cls_branch = nn.Linear(self.embed_dims, self.cls_out_channels)
        reg_branch = MLP(self.embed_dims, self.embed_dims, 4, 3)
        if self.share_pred_layer:
            self.cls_branches = nn.ModuleList([cls_branch] * self.num_pred_layer)
            self.reg_branches = nn.ModuleList([reg_branch] * self.num_pred_layer)
        else:
            self.cls_branches = nn.ModuleList(copy.deepcopy(cls_branch)
                                              for _ in range(self.num_pred_layer))
            self.reg_branches = nn.ModuleList(copy.deepcopy(reg_branch)
                                              for _ in range(self.num_pred_layer))

    def init_weights(self) -> None:
        """Class bias from a prior probability of 0.01; the last box layer starts at
        zero with a (w, h) bias of -2 in the first branch (0 in two-stage, where the
        proposals already carry a size)."""
        super().init_weights()
        bias = -math.log((1 - 0.01) / 0.01)
        for branch in self.cls_branches:
            nn.init.constant_(branch.bias, bias)
        for branch in self.reg_branches:
            nn.init.constant_(branch.layers[-1].weight, 0.0)
            nn.init.constant_(branch.layers[-1].bias, 0.0)
        nn.init.constant_(self.reg_branches[0].layers[-1].bias[2:], -2.0)
        if self.as_two_stage:
            for branch in self.reg_branches:
                nn.init.constant_(branch.layers[-1].bias[2:], 0.0)

    # ---------------------------------------------------------------- forward
    def forward(self, inputs: HeadInputs) -> HeadOutputs:
        """Logits ``(D, B, Q, num_classes)`` and boxes ``(D, B, Q, 4)``; in two-stage
        also the encoder's proposal logits and boxes ``(B, N, ...)``."""
        all_cls, all_boxes = [], []
        for layer, hidden in enumerate(inputs.hidden_states):
            reference = inverse_sigmoid(inputs.references[layer], self.reference_eps)
            delta = self.reg_branches[layer](hidden)
            if reference.shape[-1] == 4:
                coords = delta + reference
            else:
                coords = torch.cat([delta[..., :2] + reference, delta[..., 2:]], -1)
            all_cls.append(self.cls_branches[layer](hidden))
            all_boxes.append(coords.sigmoid())
        return HeadOutputs(torch.stack(all_cls), torch.stack(all_boxes),
                           inputs.enc_outputs_class, inputs.enc_outputs_coord)

    # ------------------------------------------------------------------- loss
    def loss_by_feat(self, outputs: HeadOutputs, gt: GroundTruth) -> Dict[str, Tensor]:
        losses = self.decoder_losses(outputs.all_cls_scores, outputs.all_bbox_preds, gt)
        if outputs.enc_cls_scores is not None:
            losses.update(self.encoder_losses(outputs.enc_cls_scores, outputs.enc_bbox_preds, gt))
        return losses

    def encoder_losses(self, enc_cls: Tensor, enc_boxes: Tensor,
                       gt: GroundTruth) -> Dict[str, Tensor]:
        """The two-stage proposal loss: every target is class 0 (objectness), or
        its own class without ``class_agnostic_proposals``."""
        labels = gt.labels
        if self.class_agnostic_proposals:
            labels = [torch.zeros_like(x) for x in gt.labels]
        matching = self.assigner.assign(enc_cls[None].detach(), enc_boxes[None].detach(), labels,
                                        gt.boxes)[0]
        losses = self.set_loss(enc_cls, enc_boxes, matching, gt, labels)
        return {f'enc_{name}': value for name, value in losses.items()}

    def classification_loss(self, cls_scores: Tensor, labels: Tensor, num_boxes: Tensor,
                            ious: Optional[Tensor] = None) -> Tensor:
        """Sigmoid focal (or, with ``ious``, varifocal) loss summed over queries and
        classes, divided by the number of boxes (the official normalisation)."""
        if ious is not None:
            return self.loss_cls(cls_scores, labels, ious, avg_factor=num_boxes)
        return self.loss_cls(cls_scores, labels, avg_factor=num_boxes)

    # -------------------------------------------------------------- inference
    def select_topk(self, cls_score: Tensor, max_per_img: int) -> Tuple[Tensor, Tensor, Tensor]:
        """The ``max_per_img`` best (query, class) pairs of the sigmoid scores."""
        k = min(max_per_img, cls_score.shape[-2] * cls_score.shape[-1])
        scores, indices = cls_score.sigmoid().flatten(-2).topk(k)
        return scores, indices % self.num_classes, indices // self.num_classes

