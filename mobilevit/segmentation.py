"""DeepLabV3 on a MobileViT v1 backbone: the public ``deeplabv3-mobilevit-*`` segmentation models.

Layout follows ml-cvnets (``cvnets/models/segmentation/enc_dec.py``, ``heads/deeplabv3.py``,
``cvnets/modules/aspp_block.py``) and transformers (``MobileViTForSemanticSegmentation``):

* the backbone is our classifier's, without ``conv_exp`` and the classifier, with the stages past the
  output stride dilated (:func:`mobilevit.config.dilate`); its last stage feeds the head;
* ASPP: a 1x1 branch, three 3x3 atrous branches (rates 6/12/18), an image-pooling branch, each
  conv + BatchNorm + ReLU to 256 channels; concatenated, projected by a 1x1 conv + BN + ReLU, dropout;
* a 1x1 classifier conv with bias (after Dropout2d).

The output is the logits at ``1/output_stride`` of the input (``[B, K, H/16, W/16]`` for the public
models), as transformers returns them; ``upsample=True`` resizes them to the input size (bilinear,
``align_corners=False``, as transformers' ``post_process_semantic_segmentation`` does; ml-cvnets' head
upsamples with ``align_corners=True``), the form an exported per-pixel map needs.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import SegmentationConfig, get_segmentation_config
from .model import ConvNormAct, MobileViT
from .patches import PatchStrategy


class ASPPPooling(nn.Module):
    """Image-level branch: global average, 1x1 conv + BN + ReLU, then back to the input's size.

    Bilinear upsampling of a 1x1 map is a broadcast, so it is written as ``expand`` (no resize op
    in exported graphs); it equals transformers' ``interpolate`` to rounding.
    """

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.proj = ConvNormAct(cin, cout, 1, act=nn.ReLU)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        H, W = x.shape[2], x.shape[3]
        y = self.proj(x.mean(dim=(2, 3), keepdim=True))  # [B, Cin, H, W] -> [B, Cin, 1, 1] -> [B, C, 1, 1]
        return y.expand(-1, -1, H, W)  # -> [B, C, H, W]


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling (DeepLabV3): five parallel branches, concatenated and projected."""

    def __init__(self, cin: int, cout: int, rates: tuple[int, ...], dropout: float):
        super().__init__()
        self.convs = nn.ModuleList([ConvNormAct(cin, cout, 1, act=nn.ReLU)] + [
            ConvNormAct(cin, cout, 3, act=nn.ReLU, dilation=r) for r in rates])
        self.pool = ASPPPooling(cin, cout)
        self.project = ConvNormAct((len(rates) + 2) * cout, cout, 1, act=nn.ReLU)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branches = [conv(x) for conv in self.convs] + [self.pool(x)]  # 5 x [B, C, H, W]
        return self.dropout(self.project(torch.cat(branches, dim=1)))  # [B, 5C, H, W] -> [B, C, H, W]


class DeepLabV3Head(nn.Module):
    """ASPP, Dropout2d, 1x1 classifier with bias: ``[B, Cin, h, w] -> [B, num_classes, h, w]``."""

    def __init__(self, cin: int, cfg: SegmentationConfig):
        super().__init__()
        self.aspp = ASPP(cin, cfg.aspp_out_channels, cfg.atrous_rates, cfg.aspp_dropout)
        self.dropout = nn.Dropout2d(cfg.classifier_dropout)
        self.classifier = nn.Conv2d(cfg.aspp_out_channels, cfg.num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.dropout(self.aspp(x)))


def upsample_logits(logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Logits ``[B, K, h, w]`` resized to ``size`` (bilinear, ``align_corners=False``) -> ``[B, K, H, W]``."""
    return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)


class MobileViTSegmentation(nn.Module):
    """DeepLabV3-MobileViT: dilated MobileViT v1 backbone + DeepLabV3 head.

    Args:
        cfg: a :class:`SegmentationConfig` (see ``mobilevit.config.SEGMENTATION_VARIANTS``) or a variant name.
        patches: unfold/fold strategy name or object, as for :class:`MobileViT`.
        attention: attention layout, as for :class:`MobileViT`.
        upsample: return logits at the input size instead of ``1/output_stride`` of it.
    """

    def __init__(self, cfg: SegmentationConfig | str = "small", patches: str | PatchStrategy = "reference",
                 attention: str = "batched", upsample: bool = False):
        super().__init__()
        self.cfg = get_segmentation_config(cfg) if isinstance(cfg, str) else cfg
        self.upsample = upsample
        self.backbone = MobileViT(self.cfg.dilated_backbone, patches=patches, features_only=True,
                                  out_indices=(-1,), attention=attention)
        self.head = DeepLabV3Head(self.cfg.backbone.stages[-1].out_channels, self.cfg)

    def set_patches(self, patches: str | PatchStrategy) -> "MobileViTSegmentation":
        """Swap the unfold/fold strategy in place (weights are untouched)."""
        self.backbone.set_patches(patches)
        return self

    @property
    def patches(self) -> PatchStrategy:
        return self.backbone.patches

    @property
    def attention_layout(self) -> str:
        return self.backbone.attention_layout

    def set_attention(self, layout: str) -> "MobileViTSegmentation":
        """Swap the attention layout in place (weights are untouched)."""
        self.backbone.set_attention(layout)
        return self

    def check_input(self, x: torch.Tensor) -> None:
        """Raise :class:`~mobilevit.model.InputSizeError` for an input the network cannot take."""
        self.backbone.check_input(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        (feats,) = self.backbone(x)  # [B, 3, H, W] -> [B, C5, H/s, W/s], s = cfg.output_stride
        logits = self.head(feats)  # -> [B, K, H/s, W/s]
        if self.upsample:
            return upsample_logits(logits, (x.shape[2], x.shape[3]))  # -> [B, K, H, W]
        return logits


def build_segmentation(variant: str | SegmentationConfig = "small", num_classes: int | None = None,
                       patches: str | PatchStrategy = "reference", **kwargs) -> MobileViTSegmentation:
    """Build a DeepLabV3-MobileViT in eval mode, e.g. ``build_segmentation("xx_small")`` (21 VOC classes)."""
    cfg = get_segmentation_config(variant) if isinstance(variant, str) else variant
    if num_classes is not None and num_classes != cfg.num_classes:
        from dataclasses import replace

        cfg = replace(cfg, num_classes=num_classes)
    return MobileViTSegmentation(cfg, patches=patches, **kwargs).eval()
