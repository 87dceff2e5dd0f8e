"""The template of every DETR-family detector.

``extract_feat -> pre_transformer -> forward_encoder -> pre_decoder ->
forward_decoder -> bbox_head``. Subclasses override the steps that differ;
the records passed between steps are in :mod:`mmdeform.models.structures`.
"""
import dataclasses
from abc import ABCMeta, abstractmethod
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from mmdet.models.detectors.base import BaseDetector
from mmdet.structures import OptSampleList, SampleList
from torch import Tensor, nn

from mmdeform.registry import MODELS
from ..structures import DecoderInputs, EncoderInputs, HeadInputs, HeadOutputs


class BaseDETR(BaseDetector, metaclass=ABCMeta):
    """Backbone, optional neck and a head around an encoder-decoder transformer.

    Args:
        backbone, neck, bbox_head: configs built from the registry.
        encoder, decoder, positional_encoding: configs read by the subclass'
            :meth:`_init_transformer`.
        num_queries: decoder queries.
        train_cfg, test_cfg: handed to the head (assigner; ``max_per_img``).
        data_preprocessor, init_cfg: as in mmdet.
    """

    def __init__(self,
                 backbone: dict,
                 neck: Optional[dict] = None,
                 encoder: Optional[dict] = None,
                 decoder: Optional[dict] = None,
                 bbox_head: Optional[dict] = None,
                 positional_encoding: Optional[dict] = None,
                 num_queries: int = 100,
                 train_cfg: Optional[dict] = None,
                 test_cfg: Optional[dict] = None,
                 data_preprocessor: Optional[dict] = None,
                 init_cfg: Optional[dict] = None) -> None:
        super().__init__(data_preprocessor=data_preprocessor, init_cfg=init_cfg)
        self.data_preprocessor.register_forward_hook(mark_image_sizes_dynamic)
        self.train_cfg = train_cfg
        self.test_cfg = test_cfg
        self.num_queries = num_queries
        self.backbone = MODELS.build(backbone)
        if neck is not None:
            self.neck = MODELS.build(neck)
        bbox_head = dict(bbox_head, train_cfg=train_cfg, test_cfg=test_cfg)
        self.bbox_head = MODELS.build(bbox_head)
        pos_cfg = dict(positional_encoding or {})
        pos_cfg.setdefault('type', 'SinePositionalEncoding')
        self.positional_encoding = MODELS.build(pos_cfg)
        self._init_transformer(dict(encoder or {}), dict(decoder or {}))
        self.embed_dims = self.decoder.embed_dims
        if 2 * self.positional_encoding.num_feats != self.embed_dims:
            raise ValueError(f'{type(self).__name__}: positional_encoding.num_feats '
                             f'({self.positional_encoding.num_feats}) must be half of the '
                             f'transformer width ({self.embed_dims})')

    def init_weights(self) -> None:
        """Backbone/neck/head by their own rules, then Xavier for every matrix of
        the encoder (if the model has one) and decoder (as the official repositories)."""
        super().init_weights()
        for module in (self.encoder, self.decoder):
            for p in module.parameters() if module is not None else ():
                if p.dim() > 1:
                    nn.init.xavier_uniform_(p)

    @abstractmethod
    def _init_transformer(self, encoder: dict, decoder: dict) -> None:
        """Build ``self.encoder`` (None where the neck is the encoder), ``self.decoder``
        and the query embeddings."""

    # ------------------------------------------------------------------ steps
    def extract_feat(self, batch_inputs: Tensor) -> Tuple[Tensor, ...]:
        """``(B, 3, H, W)`` images -> neck features ``(B, C, h_l, w_l)`` per level."""
        feats = self.backbone(batch_inputs)
        return self.neck(feats) if self.with_neck else feats

    @abstractmethod
    def pre_transformer(self, feats: Sequence[Tensor],
                        batch_data_samples: SampleList) -> EncoderInputs:
        """Flatten features, build padding masks and positions."""

    @abstractmethod
    def forward_encoder(self, enc: EncoderInputs) -> Tensor:
        """Return the memory ``(B, N, C)``."""

    @abstractmethod
    def pre_decoder(self, memory: Tensor, enc: EncoderInputs) -> Tuple[DecoderInputs, dict]:
        """Return the decoder inputs and extra :class:`HeadInputs` fields by name
        (the two-stage proposals)."""

    @abstractmethod
    def forward_decoder(self, dec: DecoderInputs, enc: EncoderInputs) -> HeadInputs:
        """Run the decoder and return what the head needs."""

    def forward_transformer(self, feats: Sequence[Tensor],
                            batch_data_samples: SampleList) -> HeadInputs:
        enc = self.pre_transformer(feats, batch_data_samples)
        memory = self.forward_encoder(enc)
        dec, head_extras = self.pre_decoder(memory, enc)
        return dataclasses.replace(self.forward_decoder(dec, enc), **head_extras)

    # ------------------------------------------------------------ the 3 modes
    def loss(self, batch_inputs: Tensor, batch_data_samples: SampleList) -> dict:
        head_inputs = self.forward_transformer(self.extract_feat(batch_inputs), batch_data_samples)
        return self.bbox_head.loss(head_inputs, batch_data_samples)

    def predict(self, batch_inputs: Tensor, batch_data_samples: SampleList,
                rescale: bool = True) -> SampleList:
        head_inputs = self.forward_transformer(self.extract_feat(batch_inputs), batch_data_samples)
        results = self.bbox_head.predict(head_inputs, batch_data_samples, rescale=rescale)
        for sample, pred in zip(batch_data_samples, results):
            # mmdet's add_pred_to_datasample also converts the ground truth's box type,
            # which the data preprocessor has done (boxtype2tensor); reading it here would
            # make each image's box count a guard of the compiled forward (0, 1 or more:
            # a recompilation per pattern, dynamo's limit of 8 reached in a test run)
            sample.pred_instances = pred
        return batch_data_samples

    def _forward(self, batch_inputs: Tensor,
                 batch_data_samples: OptSampleList = None) -> HeadOutputs:
        if batch_data_samples is None:
            raise ValueError(f"{type(self).__name__}(mode='tensor') needs the data samples: "
                             'their img_shape and batch_input_shape give the padding masks')
        head_inputs = self.forward_transformer(self.extract_feat(batch_inputs), batch_data_samples)
        return self.bbox_head(head_inputs)


def mark_image_sizes_dynamic(data_preprocessor, args, data) -> None:
    """Forward hook of the data preprocessor: the height and width of the batch it returns
    are symbolic to ``torch.compile`` from the first compilation of the detector on.

    Image sizes vary from batch to batch, so they would become symbolic at the second
    compilation anyway (dynamo's automatic dynamic shapes); marking them now saves that
    compilation. On the CPU it also decides how inductor runs the Linear layers of a
    frozen inference graph: with a static number of tokens it calls MKL's packed GEMM, with
    a symbolic one oneDNN's, which on AVX-512 CPUs that MKL does not tune for (AMD's) ran
    the transformer 1.7x faster (docs/deployment.md). A hint (``maybe_mark_dynamic``): a
    size that the graph needs static stays static.
    """
    inputs = data.get('inputs') if isinstance(data, dict) else None
    if isinstance(inputs, torch.Tensor) and inputs.dim() == 4 and not _compiling():
        torch._dynamo.maybe_mark_dynamic(inputs, 2)
        torch._dynamo.maybe_mark_dynamic(inputs, 3)


def _compiling() -> bool:
    is_compiling = getattr(torch.compiler, 'is_compiling', None)  # torch>=2.3
    return bool(is_compiling and is_compiling())


def padding_masks(batch_data_samples: SampleList,
                  feats: Sequence[Tensor]) -> List[Optional[Tensor]]:
    """Per-level padding masks, True where a feature cell lies in the padding.

    The image-size mask is downsampled to each level by nearest interpolation,
    as in both official repos. Returns a list of Nones when no image of the
    batch is padded, so attention can skip masking.

    Under ``torch.compile`` the sizes are symbolic once they vary: one comparison decides
    whether any image is padded and the mask is built by comparisons with ``arange``, not
    by slicing per image, so that the compiled graph is guarded by that one condition
    rather than by every image's size (a recompilation per batch otherwise).
    """
    input_h, input_w = batch_data_samples[0].batch_input_shape
    shapes = [sample.img_shape[:2] for sample in batch_data_samples]
    if sum((input_h - h) + (input_w - w) for h, w in shapes) == 0:  # h <= input_h, w <= input_w
        return [None] * len(feats)
    device = feats[0].device
    valid = torch.tensor(shapes, device=device)  # torch.tensor keeps symbolic sizes symbolic
    rows = torch.arange(input_h, device=device)[None, :, None] >= valid[:, 0, None, None]
    cols = torch.arange(input_w, device=device)[None, None, :] >= valid[:, 1, None, None]
    mask = (rows | cols).to(feats[0].dtype)
    return [F.interpolate(mask[None], size=f.shape[-2:]).to(torch.bool)[0] for f in feats]
