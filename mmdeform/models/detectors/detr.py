"""DETR: End-to-End Object Detection with Transformers (Carion et al., ECCV 2020)."""
from typing import Sequence, Tuple

import torch
from mmdet.structures import SampleList
from torch import Tensor, nn

from mmdeform.registry import MODELS
from ..layers.detr_layers import DetrDecoder, DetrEncoder
from ..structures import DecoderInputs, EncoderInputs, HeadInputs
from .base_detr import BaseDETR, padding_masks


@MODELS.register_module()
class DETR(BaseDETR):
    """DETR on the last neck level, with ``num_queries`` learned positional queries.

    ``encoder`` and ``decoder`` take ``num_layers`` and the layer arguments of
    :class:`DetrEncoderLayer` / :class:`DetrDecoderLayer`.
    """

    def _init_transformer(self, encoder: dict, decoder: dict) -> None:
        self.encoder = DetrEncoder(**encoder)
        self.decoder = DetrDecoder(**decoder)
        self.query_embedding = nn.Embedding(self.num_queries, self.encoder.embed_dims)

    def pre_transformer(self, feats: Sequence[Tensor],
                        batch_data_samples: SampleList) -> EncoderInputs:
        feat = feats[-1]
        mask = padding_masks(batch_data_samples, [feat])[0]
        pos_mask = mask if mask is not None else feat.new_zeros(
            (feat.shape[0], *feat.shape[-2:]), dtype=torch.bool)
        pos = self.positional_encoding(pos_mask)
        return EncoderInputs(
            feat=feat.flatten(2).transpose(1, 2),
            feat_pos=pos.flatten(2).transpose(1, 2),
            feat_mask=None if mask is None else mask.flatten(1))

    def forward_encoder(self, enc: EncoderInputs) -> Tensor:
        return self.encoder(enc.feat, enc.feat_pos, enc.feat_mask)

    def pre_decoder(self, memory: Tensor, enc: EncoderInputs) -> Tuple[DecoderInputs, dict]:
        query_pos = self.query_embedding.weight.unsqueeze(0).expand(memory.shape[0], -1, -1)
        return DecoderInputs(query=torch.zeros_like(query_pos), query_pos=query_pos,
                             memory=memory), {}

    def forward_decoder(self, dec: DecoderInputs, enc: EncoderInputs) -> HeadInputs:
        hidden_states = self.decoder(dec.query, dec.query_pos, dec.memory, enc.feat_pos,
                                     enc.feat_mask)
        return HeadInputs(hidden_states=hidden_states)
