"""Deformable DETR (Zhu et al., ICLR 2021): multi-scale deformable attention,
iterative box refinement and the two-stage variant."""
import math
from typing import Optional, Sequence, Tuple

import torch
from mmdet.structures import SampleList
from torch import Tensor, nn

from mmdeform.registry import MODELS
from ..layers.deformable_detr_layers import DeformableDetrDecoder, DeformableDetrEncoder
from ..layers.msdeform_attn import MSDeformAttn
from ..structures import DecoderInputs, EncoderInputs, HeadInputs
from .base_detr import BaseDETR, padding_masks


def valid_ratios_of(mask: Optional[Tensor], shape: Tuple[int, int], batch_size: int,
                    device) -> Tensor:
    """``(B, 2)`` unpadded fraction ``(w, h)`` of one level, from its padding mask."""
    if mask is None:
        return torch.ones(batch_size, 2, device=device)
    h, w = shape
    valid_h = (~mask[:, :, 0]).sum(1).float() / h
    valid_w = (~mask[:, 0, :]).sum(1).float() / w
    return torch.stack([valid_w, valid_h], -1)


@MODELS.register_module()
class DeformableDETR(BaseDETR):
    """Deformable DETR over all neck levels.

    Args:
        with_box_refine: each decoder layer refines the boxes of the previous one.
        as_two_stage: the queries come from the top-scoring encoder proposals.
            The head's ``share_pred_layer``, ``as_two_stage`` and
            ``num_pred_layer`` follow from these and the decoder depth.
        num_feature_levels: the number of neck outputs the transformer attends
            to (4 for the multi-scale model, 1 for single-scale).
        Others: see :class:`BaseDETR`. ``encoder``/``decoder`` take
            ``num_layers`` and the layer arguments.
    """

    def __init__(self, *args, with_box_refine: bool = False, as_two_stage: bool = False,
                 num_feature_levels: int = 4, **kwargs) -> None:
        self.with_box_refine = with_box_refine
        self.as_two_stage = as_two_stage
        self.num_feature_levels = num_feature_levels
        if kwargs.get('bbox_head') is not None:
            num_layers = (kwargs.get('decoder') or {}).get('num_layers', 6)
            kwargs['bbox_head'] = self._configure_head(dict(kwargs['bbox_head']), num_layers)
        super().__init__(*args, **kwargs)

    def _configure_head(self, bbox_head: dict, num_layers: int) -> dict:
        """Check the head's settings against the detector's and fill them in."""
        if bbox_head.get('share_pred_layer', not self.with_box_refine) == self.with_box_refine:
            raise ValueError('bbox_head.share_pred_layer must be the opposite of '
                             'with_box_refine (refinement needs a box branch per layer)')
        if bbox_head.get('as_two_stage', self.as_two_stage) != self.as_two_stage:
            raise ValueError('bbox_head.as_two_stage must equal the detector\'s as_two_stage')
        if bbox_head.get('num_pred_layer', num_layers) != num_layers:
            raise ValueError(f'bbox_head.num_pred_layer ({bbox_head["num_pred_layer"]}) '
                             f'must equal decoder.num_layers ({num_layers})')
        return dict(bbox_head, share_pred_layer=not self.with_box_refine,
                    as_two_stage=self.as_two_stage, num_pred_layer=num_layers)

    def _init_transformer(self, encoder: dict, decoder: dict) -> None:
        encoder.setdefault('num_levels', self.num_feature_levels)
        decoder.setdefault('num_levels', self.num_feature_levels)
        self.encoder = DeformableDetrEncoder(**encoder)
        self.decoder = DeformableDetrDecoder(**decoder)
        c = self.encoder.embed_dims
        self.level_embed = nn.Parameter(torch.zeros(self.num_feature_levels, c))
        if self.as_two_stage:
            self.memory_trans_fc = nn.Linear(c, c)
            self.memory_trans_norm = nn.LayerNorm(c)
            self.pos_trans_fc = nn.Linear(2 * c, 2 * c)
            self.pos_trans_norm = nn.LayerNorm(2 * c)
        else:
            self.query_embedding = nn.Embedding(self.num_queries, 2 * c)
            self.reference_points_fc = nn.Linear(c, 2)

    def init_weights(self) -> None:
        super().init_weights()
        for m in self.modules():
            if isinstance(m, MSDeformAttn):
                m.init_weights()
        if not self.as_two_stage:
            nn.init.xavier_uniform_(self.reference_points_fc.weight, gain=1.0)
            nn.init.constant_(self.reference_points_fc.bias, 0.0)
        nn.init.normal_(self.level_embed)

    # ----------------------------------------------------------------- steps
    def pre_transformer(self, feats: Sequence[Tensor],
                        batch_data_samples: SampleList) -> EncoderInputs:
        if len(feats) != self.num_feature_levels:
            raise ValueError(f'{type(self).__name__}: the neck gives {len(feats)} levels, '
                             f'num_feature_levels is {self.num_feature_levels}')
        masks = padding_masks(batch_data_samples, feats)
        batch_size = feats[0].shape[0]
        flat_feats, flat_pos, flat_masks, shapes, ratios = [], [], [], [], []
        for lvl, (feat, mask) in enumerate(zip(feats, masks)):
            h, w = feat.shape[-2:]
            flat_feats.append(feat.flatten(2).transpose(1, 2))
            flat_pos.append(self.level_positions(feat, mask, lvl))
            flat_masks.append(None if mask is None else mask.flatten(1))
            shapes.append((h, w))
            ratios.append(valid_ratios_of(mask, (h, w), batch_size, feat.device))
        # torch.tensor (not as_tensor) keeps symbolic sizes symbolic under torch.export
        spatial_shapes = torch.tensor(shapes, dtype=torch.long, device=feats[0].device)
        level_start_index = torch.cat((spatial_shapes.new_zeros(1),
                                       spatial_shapes.prod(1).cumsum(0)[:-1]))
        return EncoderInputs(
            feat=torch.cat(flat_feats, 1),
            feat_pos=None if flat_pos[0] is None else torch.cat(flat_pos, 1),
            feat_mask=None if masks[0] is None else torch.cat(flat_masks, 1),
            spatial_shapes=spatial_shapes,
            level_start_index=level_start_index,
            valid_ratios=torch.stack(ratios, 1),
            level_shapes=shapes)

    def level_positions(self, feat: Tensor, mask: Optional[Tensor], lvl: int) -> Optional[Tensor]:
        """``(B, h * w, C)`` sine positions plus the level embedding of one level."""
        b, _, h, w = feat.shape
        pos_mask = mask if mask is not None else feat.new_zeros((b, h, w), dtype=torch.bool)
        pos = self.positional_encoding(pos_mask).flatten(2).transpose(1, 2)
        return pos + self.level_embed[lvl].view(1, 1, -1)

    def forward_encoder(self, enc: EncoderInputs) -> Tensor:
        return self.encoder(enc.feat, enc.feat_pos, enc.feat_mask, enc.spatial_shapes,
                            enc.level_start_index, enc.valid_ratios, enc.level_shapes)

    def pre_decoder(self, memory: Tensor, enc: EncoderInputs) -> Tuple[DecoderInputs, dict]:
        batch_size, _, c = memory.shape
        if not self.as_two_stage:
            query_pos, query = self.query_embedding.weight.split(c, dim=1)
            query_pos = query_pos.unsqueeze(0).expand(batch_size, -1, -1)
            query = query.unsqueeze(0).expand(batch_size, -1, -1)
            reference_points = self.reference_points_fc(query_pos).sigmoid()
            return DecoderInputs(query, query_pos, memory, reference_points), {}

        self._check_enough_cells(memory, enc)
        output_memory, output_proposals = self.encoder_proposals(memory, enc.feat_mask,
                                                                 enc.level_shapes)
        proposal_layer = self.decoder.num_layers
        enc_outputs_class = self.bbox_head.cls_branches[proposal_layer](output_memory)
        enc_outputs_coord_unact = (self.bbox_head.reg_branches[proposal_layer](output_memory) +
                                   output_proposals)
        # class-agnostic: the proposal branch is trained on its first logit only
        topk = torch.topk(enc_outputs_class[..., 0], k=self.num_queries, dim=1)[1]
        topk_coords_unact = torch.gather(enc_outputs_coord_unact, 1,
                                         topk.unsqueeze(-1).expand(-1, -1, 4)).detach()
        pos_trans = self.pos_trans_norm(self.pos_trans_fc(
            self.proposal_position_embedding(topk_coords_unact, num_pos_feats=c // 2)))
        query_pos, query = pos_trans.split(c, dim=2)
        dec = DecoderInputs(query, query_pos, memory, topk_coords_unact.sigmoid())
        return dec, dict(enc_outputs_class=enc_outputs_class,
                         enc_outputs_coord=enc_outputs_coord_unact.sigmoid())

    def forward_decoder(self, dec: DecoderInputs, enc: EncoderInputs) -> HeadInputs:
        reg_branches = self.bbox_head.reg_branches if self.with_box_refine else None
        hidden_states, references = self.decoder(
            dec.query, dec.query_pos, dec.memory, enc.feat_mask, dec.reference_points,
            enc.spatial_shapes, enc.level_start_index, enc.valid_ratios, reg_branches)
        return HeadInputs(hidden_states=hidden_states, references=references)

    # ------------------------------------------------------------- two-stage
    def _check_enough_cells(self, memory: Tensor, enc: EncoderInputs) -> None:
        if memory.shape[1] < self.num_queries:
            raise ValueError(
                f'two-stage {type(self).__name__} selects num_queries={self.num_queries} '
                f'proposals, but the image gives only {memory.shape[1]} feature cells over all '
                f'levels (one anchor each; level shapes {enc.level_shapes}); use a larger image '
                'or fewer queries')

    def encoder_proposals(self, memory: Tensor, memory_mask: Optional[Tensor],
                          level_shapes: Sequence[Tuple[int, int]]) -> Tuple[Tensor, Tensor]:
        """One proposal per memory position: its cell centre with a size of
        ``0.05 * 2^level`` of the valid image, in inverse-sigmoid space.

        Returns the transformed memory ``(B, N, C)`` (zeroed at padding and at
        proposals that touch the border) and the proposals ``(B, N, 4)``
        (``inf`` there, so they never win the top-k).
        """
        batch_size = memory.shape[0]
        proposals = []
        start = 0
        for lvl, (h, w) in enumerate(level_shapes):
            if memory_mask is not None:
                mask = memory_mask[:, start:start + h * w].view(batch_size, h, w)
                valid_h = (~mask[:, :, 0]).sum(1)
                valid_w = (~mask[:, 0, :]).sum(1)
            else:
                valid_h = memory.new_full((batch_size, ), h)
                valid_w = memory.new_full((batch_size, ), w)
            grid_y, grid_x = torch.meshgrid(  # arange: linspace(0, h - 1, h), see reference_points
                torch.arange(h, dtype=torch.float32, device=memory.device),
                torch.arange(w, dtype=torch.float32, device=memory.device),
                indexing='ij')
            grid = torch.stack([grid_x, grid_y], -1)
            scale = torch.stack([valid_w, valid_h], -1).float().view(batch_size, 1, 1, 2)
            grid = (grid.unsqueeze(0).expand(batch_size, -1, -1, -1) + 0.5) / scale
            wh = torch.ones_like(grid) * 0.05 * (2.0**lvl)
            proposals.append(torch.cat([grid, wh], -1).view(batch_size, -1, 4))
            start += h * w
        proposals = torch.cat(proposals, 1)
        valid = ((proposals > 0.01) & (proposals < 0.99)).all(-1, keepdim=True)
        proposals = torch.log(proposals / (1 - proposals))
        if memory_mask is not None:
            proposals = proposals.masked_fill(memory_mask.unsqueeze(-1), float('inf'))
            memory = memory.masked_fill(memory_mask.unsqueeze(-1), 0.0)
        proposals = proposals.masked_fill(~valid, float('inf'))
        memory = memory.masked_fill(~valid, 0.0)
        return self.memory_trans_norm(self.memory_trans_fc(memory)), proposals

    @staticmethod
    def proposal_position_embedding(proposals: Tensor, num_pos_feats: int = 128,
                                    temperature: int = 10000) -> Tensor:
        """Sine embedding of ``(B, Q, 4)`` inverse-sigmoid boxes -> ``(B, Q, 4 * num_pos_feats)``."""
        scale = 2 * math.pi
        dim_t = torch.arange(num_pos_feats, dtype=torch.float32, device=proposals.device)
        dim_t = temperature**(2 * torch.div(dim_t, 2, rounding_mode='floor') / num_pos_feats)
        pos = proposals.sigmoid() * scale
        pos = pos[:, :, :, None] / dim_t
        pos = torch.stack((pos[:, :, :, 0::2].sin(), pos[:, :, :, 1::2].cos()), dim=4)
        return pos.flatten(2)
