"""RT-DETR (Zhao et al., CVPR 2024) and RT-DETRv2 (Lv et al., 2024): DINO's query
selection and denoising after a hybrid CNN-transformer encoder."""
from typing import Dict, Optional

from mmcv.cnn import ConvModule, fuse_conv_bn
import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from mmdeform.registry import MODELS
from ..necks.hybrid_encoder import RepVGGBlock
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

    :meth:`switch_to_deploy` fuses the model for inference (eval only afterwards).

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

    # ------------------------------------------------------------- deployment
    def switch_to_deploy(self) -> Dict[str, int]:
        """Fuse for inference; the outputs in eval mode are unchanged up to rounding.

        1. every :class:`RepVGGBlock` becomes one 3x3 conv (both branches and their BN);
        2. every BatchNorm that follows a conv (the backbone's, frozen ones included,
           the encoder's ConvModules, the decoder's input projection) is folded into
           the conv's weight and bias by mmcv's :func:`~mmcv.cnn.fuse_conv_bn` (the BN
           becomes an ``Identity``). It pairs a BN with the conv registered just before
           it in the same parent, which is the order the forward applies them in for
           mmdet's ResNet and for a ConvModule whose order is conv then norm; other
           ConvModule orders are refused.

        3. the convolution weights are made channels-last (``torch.channels_last``):
           oneDNN then runs every convolution in that layout without reordering the
           activations around each one, which made the fused RT-DETRv2-R18 1.33x faster
           on a 2-core CPU (docs/benchmarks.md); the inputs need no change.

        Folding uses the running statistics, so the model is eval-only afterwards:
        ``model.train()`` raises. Calling it again fuses nothing more.

        Returns the counts of this call: ``repvgg_blocks``, ``conv_bn`` (BN folded) and
        ``bn_left`` (BN not after a conv, kept; 0 in RT-DETR).
        """
        for name, m in self.named_modules():
            if (isinstance(m, ConvModule) and m.with_norm
                    and m.order.index('norm') != m.order.index('conv') + 1):
                raise ValueError(f'{type(self).__name__}.switch_to_deploy: {name} has order '
                                 f'{m.order}; only a norm right after the conv can be folded')
        blocks = [m for m in self.modules() if isinstance(m, RepVGGBlock) and hasattr(m, 'conv1')]
        for block in blocks:  # before fuse_conv_bn, which would fold the branches' BN itself
            block.switch_to_deploy()
        bn_before = sum(isinstance(m, _BatchNorm) for m in self.modules())
        fuse_conv_bn(self)
        for m in self.modules():
            if isinstance(m, ConvModule) and m.with_norm and isinstance(m.norm, nn.Identity):
                m.with_norm = False  # mmcv's efficient conv-BN path must not see the Identity
        bn_left = sum(isinstance(m, _BatchNorm) for m in self.modules())
        self.to(memory_format=torch.channels_last)
        self.deployed = True
        self.eval()
        return dict(repvgg_blocks=len(blocks), conv_bn=bn_before - bn_left, bn_left=bn_left)

    def train(self, mode: bool = True) -> 'RTDETR':
        if mode and getattr(self, 'deployed', False):
            raise RuntimeError(f'{type(self).__name__} was fused by switch_to_deploy() '
                               '(BatchNorm folded with its running statistics, RepVGG '
                               'branches merged): it is eval-only; rebuild it from the '
                               'checkpoint to train')
        return super().train(mode)
