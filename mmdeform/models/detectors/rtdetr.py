"""RT-DETR (Zhao et al., CVPR 2024) and RT-DETRv2 (Lv et al., 2024): DINO's query
selection and denoising after a hybrid CNN-transformer encoder."""
from typing import Optional

from torch import Tensor

from mmdeform.registry import MODELS
from ..structures import EncoderInputs
from .dino import DINO


@MODELS.register_module()
class RTDETR(DINO):
    """:class:`DINO` whose encoder is the neck; the steps that differ:

    * ``extract_feat``: backbone, then the neck list ``[HybridEncoder,
      ChannelMapper]``: the hybrid encoder (AIFI + CCFM) and the decoder's input
      projection (1x1 conv + BN per level).
    * ``pre_transformer``: the levels flattened without positions or level
      embeddings (:meth:`level_positions` gives None); ``forward_encoder`` is the
      identity.
    * ``pre_decoder``: DINO's query selection with ``query_selection='memory'``:
      the top ``num_queries`` anchors by their best class logit; the content
      queries are the selected memory, detached. The anchors and their valid
      mask are made from the level shapes in every forward pass (the official
      model caches them for 640 x 640 in evaluation), so any input size is right.
    * the decoder: :class:`DinoDecoder` with ``query_pos='box'``, no final
      norm, reference clamp 1e-5 and ``eval_idx``; its cross-attention takes
      per-level points, ``offset_scale`` and ``sampling`` (``cross_attn_cfg``).
    * the head: :class:`DINOHead` with per-layer branches and
      :class:`DetrVarifocalLoss`; denoising is DINO's generator with
      ``box_eps=1e-5, padding_box='zero'``.

    Args:
        num_feature_levels: 3 (S3-S5).
        query_selection: ``'memory'`` (official), or ``'mixed'`` (the official
            ``learn_query_content``).
        Others: see :class:`DINO`. ``encoder`` must be empty.
    """

    def __init__(self, *args, num_feature_levels: int = 3, query_selection: str = 'memory',
                 **kwargs) -> None:
        super().__init__(*args, num_feature_levels=num_feature_levels,
                         query_selection=query_selection, **kwargs)

    def _init_transformer(self, encoder: dict, decoder: dict) -> None:
        decoder.setdefault('query_pos', 'box')
        decoder.setdefault('final_norm', False)
        decoder.setdefault('reference_eps', 1e-5)
        super()._init_transformer(encoder, decoder)

    def _init_encoder(self, encoder: dict) -> None:
        if encoder:
            raise ValueError(f'RTDETR: the encoder is the HybridEncoder neck; `encoder` must be '
                             f'empty, got {encoder}')
        self.encoder = None

    def level_positions(self, feat: Tensor, mask: Optional[Tensor], lvl: int) -> None:
        return None

    def forward_encoder(self, enc: EncoderInputs) -> Tensor:
        return enc.feat
