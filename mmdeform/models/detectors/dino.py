"""DINO (Zhang et al., ICLR 2023): Deformable DETR with anchor-box queries, mixed
query selection, look-forward-twice and contrastive denoising."""
import dataclasses
from typing import Optional, Sequence, Tuple

import torch
from mmdet.structures import SampleList
from torch import Tensor, nn

from mmdeform.registry import MODELS
from ..layers.deformable_detr_layers import DeformableDetrEncoder
from ..layers.denoising import CdnQueryGenerator
from ..layers.dino_layers import DinoDecoder
from ..layers.msdeform_attn import MSDeformAttn
from ..structures import DecoderInputs, DenoisingMeta, EncoderInputs, HeadInputs
from .base_detr import BaseDETR
from .deformable_detr import DeformableDETR

QUERY_SELECTIONS = ('mixed', 'pure', 'static', 'memory')


@MODELS.register_module()
class DINO(DeformableDETR):
    """DINO: always iterative box refinement with 4-d anchors; the improvements
    are switches, so that the paper's ablations are configs.

    Args:
        dn_cfg: the :class:`CdnQueryGenerator` arguments (``label_noise_scale``,
            ``box_noise_scale``, ``num_dn_queries``, ``max_dn_queries``,
            ``num_label_embeddings``); None turns contrastive denoising off.
        look_forward_twice: see :class:`DinoDecoder`.
        query_selection: where the decoder's anchors and content queries come from.
            ``'mixed'`` (DINO): the anchors are the top-``num_queries`` encoder
            proposals by their best class logit, the content is learned.
            ``'pure'``: Deformable DETR's two-stage queries: content and
            position from ``pos_trans`` of the top proposals by their first
            (objectness) logit, the same position query for every decoder
            layer, class-agnostic proposals. ``'static'``: learned anchors and
            learned content, no encoder proposals. ``'memory'`` (RT-DETR): the
            anchors as in ``'mixed'``, the content is the selected (transformed)
            encoder memory, detached. With ``'pure'``, no
            denoising and no look-forward-twice, the model is refinement +
            two-stage :class:`DeformableDETR` (it loads its checkpoints).
        Others: see :class:`DeformableDETR`; ``with_box_refine`` must stay True
        and ``as_two_stage`` follows from ``query_selection``. The head's
        ``share_pred_layer`` chooses shared (official) or per-layer (mmdet)
        decoder branches.
    """

    def __init__(self, *args, dn_cfg: Optional[dict] = None, look_forward_twice: bool = True,
                 query_selection: str = 'mixed', **kwargs) -> None:
        if query_selection not in QUERY_SELECTIONS:
            raise ValueError(f'DINO: query_selection must be one of {QUERY_SELECTIONS}, '
                             f'got {query_selection!r}')
        if not kwargs.pop('with_box_refine', True):
            raise ValueError('DINO: with_box_refine must be True (the anchors are refined '
                             'layer by layer)')
        as_two_stage = query_selection != 'static'
        if kwargs.pop('as_two_stage', as_two_stage) != as_two_stage:
            raise ValueError(f'DINO: as_two_stage follows from query_selection '
                             f'({query_selection!r} -> {as_two_stage}); do not set it')
        self.query_selection = query_selection
        self.look_forward_twice = look_forward_twice
        self.dn_cfg = None if dn_cfg is None else dict(dn_cfg)
        super().__init__(*args, with_box_refine=True, as_two_stage=as_two_stage, **kwargs)
        self.bbox_head.class_agnostic_proposals = query_selection == 'pure'

    def _configure_head(self, bbox_head: dict, num_layers: int) -> dict:
        if bbox_head.get('as_two_stage', self.as_two_stage) != self.as_two_stage:
            raise ValueError('bbox_head.as_two_stage must equal the detector\'s as_two_stage')
        return dict(bbox_head, as_two_stage=self.as_two_stage, num_pred_layer=num_layers)

    def _init_transformer(self, encoder: dict, decoder: dict) -> None:
        self._init_encoder(encoder)
        decoder.setdefault('num_levels', self.num_feature_levels)
        pure = self.query_selection == 'pure'
        decoder.setdefault('query_pos', 'given' if pure else 'sine')
        decoder.setdefault('final_norm', not pure)
        self.decoder = DinoDecoder(look_forward_twice=self.look_forward_twice, **decoder)
        c = self.decoder.embed_dims
        if self.as_two_stage:
            self.memory_trans_fc = nn.Linear(c, c)
            self.memory_trans_norm = nn.LayerNorm(c)
        if self.query_selection == 'pure':  # Deformable DETR's two-stage queries
            self.pos_trans_fc = nn.Linear(2 * c, 2 * c)
            self.pos_trans_norm = nn.LayerNorm(2 * c)
        elif self.query_selection != 'memory':
            self.query_embedding = nn.Embedding(self.num_queries, c)  # content queries
        if self.query_selection == 'static':
            self.anchor_embedding = nn.Embedding(self.num_queries, 4)  # inverse-sigmoid boxes
        self.dn_query_generator = None
        if self.dn_cfg is not None:
            self.dn_query_generator = CdnQueryGenerator(
                num_classes=self.bbox_head.num_classes, embed_dims=c,
                num_matching_queries=self.num_queries, **self.dn_cfg)

    def _init_encoder(self, encoder: dict) -> None:
        """Deformable DETR's encoder and level embeddings."""
        encoder.setdefault('num_levels', self.num_feature_levels)
        self.encoder = DeformableDetrEncoder(**encoder)
        self.level_embed = nn.Parameter(torch.zeros(self.num_feature_levels,
                                                    self.encoder.embed_dims))

    def init_weights(self) -> None:
        BaseDETR.init_weights(self)
        for m in self.modules():
            if isinstance(m, MSDeformAttn):
                m.init_weights()
        if self.as_two_stage:
            nn.init.xavier_uniform_(self.memory_trans_fc.weight)
        if hasattr(self, 'query_embedding'):
            nn.init.xavier_uniform_(self.query_embedding.weight)
        if hasattr(self, 'level_embed'):
            nn.init.normal_(self.level_embed)

    # ----------------------------------------------------------------- steps
    def forward_transformer(self, feats: Sequence[Tensor],
                            batch_data_samples: SampleList) -> HeadInputs:
        enc = self.pre_transformer(feats, batch_data_samples)
        memory = self.forward_encoder(enc)
        dec, head_extras = self.pre_decoder(memory, enc)
        if self.training and self.dn_query_generator is not None:
            dec, head_extras['dn_meta'] = self.add_denoising_queries(dec, batch_data_samples)
        return dataclasses.replace(self.forward_decoder(dec, enc), **head_extras)

    def pre_decoder(self, memory: Tensor, enc: EncoderInputs) -> Tuple[DecoderInputs, dict]:
        batch_size = memory.shape[0]
        if self.query_selection == 'static':
            anchors = self.anchor_embedding.weight.sigmoid()
            query = self.query_embedding.weight
            return DecoderInputs(query.expand(batch_size, -1, -1), None, memory,
                                 anchors.expand(batch_size, -1, -1)), {}
        if self.query_selection == 'pure':
            return super().pre_decoder(memory, enc)
        self._check_enough_cells(memory, enc)
        output_memory, output_proposals = self.encoder_proposals(memory, enc.feat_mask,
                                                                 enc.level_shapes)
        proposal_layer = self.decoder.num_layers
        enc_outputs_class = self.bbox_head.cls_branches[proposal_layer](output_memory)
        enc_outputs_coord_unact = (self.bbox_head.reg_branches[proposal_layer](output_memory) +
                                   output_proposals)
        topk = torch.topk(enc_outputs_class.max(-1)[0], k=self.num_queries, dim=1)[1]

        def gather(x: Tensor) -> Tensor:
            return torch.gather(x, 1, topk.unsqueeze(-1).expand(-1, -1, x.shape[-1]))

        topk_coords_unact = gather(enc_outputs_coord_unact)
        if self.query_selection == 'memory':
            query = gather(output_memory).detach()
        else:
            query = self.query_embedding.weight.expand(batch_size, -1, -1)
        dec = DecoderInputs(query, None, memory, topk_coords_unact.detach().sigmoid())
        # the proposal loss sees the selected proposals, with gradients
        return dec, dict(enc_outputs_class=gather(enc_outputs_class),
                         enc_outputs_coord=topk_coords_unact.sigmoid())

    def add_denoising_queries(
            self, dec: DecoderInputs,
            batch_data_samples: SampleList) -> Tuple[DecoderInputs, DenoisingMeta]:
        """Put the denoising queries before the matching queries; the attention
        mask keeps the two parts (and the groups) apart."""
        dn = self.dn_query_generator(batch_data_samples)
        if dec.query_pos is not None:  # 'pure': the positions of the noisy boxes, the same way
            c = dec.query.shape[-1]
            dn_pos = self.pos_trans_norm(self.pos_trans_fc(
                self.proposal_position_embedding(dn.box_query, num_pos_feats=c // 2)))[..., :c]
            dec = dataclasses.replace(dec, query_pos=torch.cat([dn_pos, dec.query_pos], 1))
        dec = dataclasses.replace(
            dec, query=torch.cat([dn.label_query, dec.query], 1),
            reference_points=torch.cat([dn.box_query.sigmoid(), dec.reference_points], 1),
            attn_mask=dn.attn_mask)
        return dec, dn.meta

    def forward_decoder(self, dec: DecoderInputs, enc: EncoderInputs) -> HeadInputs:
        hidden_states, references = self.decoder(
            dec.query, dec.query_pos, dec.memory, enc.feat_mask, dec.reference_points,
            enc.spatial_shapes, enc.level_start_index, enc.valid_ratios,
            self.bbox_head.reg_branches, attn_mask=dec.attn_mask)
        if self.training and self.dn_query_generator is not None:
            # a batch without boxes leaves the label embedding out of the graph, which
            # distributed training does not allow: add it with weight zero
            label_embedding = self.dn_query_generator.label_embedding.weight
            hidden_states = hidden_states + 0.0 * label_embedding[0, 0]
        return HeadInputs(hidden_states=hidden_states, references=references)
