"""MobileViT v1 architecture as data: one frozen config type and one table of variants.

Each variant carries the public ImageNet-1k metadata of the Apple / mmpretrain / timm / Hugging
Face checkpoints, so a newcomer finds the numbers next to the architecture they describe.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

# The input size of the public checkpoints (and every default in the toolkit): defined here only.
DEFAULT_SIZE = 256


class StageKind(str, Enum):
    """What a stage is made of."""

    MV2 = "mv2"  # MobileNetV2 inverted residual blocks only
    VIT = "vit"  # one strided inverted residual, then one MobileViT block


@dataclass(frozen=True)
class StageConfig:
    """One of the five stages after the stem."""

    kind: StageKind
    out_channels: int
    stride: int  # stride of the first inverted residual of the stage
    expand_ratio: int  # hidden = in_channels * expand_ratio in inverted residuals
    num_blocks: int = 1  # inverted residual blocks (MV2 stages)
    transformer_dim: int = 0  # d, width of the tokens (VIT stages)
    ffn_dim: int = 0  # hidden width of the transformer FFN (VIT stages)
    num_layers: int = 0  # L, transformer layers in the MobileViT block (VIT stages)


@dataclass(frozen=True)
class Preprocessing:
    """What the public weights expect at the input.

    Channel order is BGR: ml-cvnets reads images with OpenCV and never converts to RGB,
    mmpretrain's MobileViT configs set ``to_rgb=False`` with mean 0 / std 255, and Hugging Face's
    ``MobileViTImageProcessor`` sets ``do_flip_channel_order=True`` (RGB -> BGR) for this reason.
    """

    resize_short_side: int = 288
    crop_size: int = DEFAULT_SIZE
    pixel_scale: float = 1.0 / 255.0  # x = pixel * scale, no mean subtraction
    channel_order: str = "BGR"

    def short_side(self, size: int) -> int:
        """Resize target of the short side for a ``size`` crop (288/256 of it for the public weights)."""
        return int(round(size * self.resize_short_side / self.crop_size))

    def describe(self) -> dict:
        """The facts a deployed app needs, as manifest fields."""
        return {"channel_order": self.channel_order, "pixel_scale": self.pixel_scale,
                "scale": f"pixel / {round(1 / self.pixel_scale):g}", "mean": 0.0,
                "resize": f"short side to {self.resize_short_side}/{self.crop_size} of the input size, "
                          "then center crop (bilinear)"}


@dataclass(frozen=True)
class PublicMetadata:
    """Published ImageNet-1k figures and checkpoint names for a variant."""

    params_m: float
    gflops: float  # at 256x256, as the papers and model cards count them
    top1: float
    top5: float
    checkpoints: dict[str, str] = field(default_factory=dict)  # format -> public file / model id


@dataclass(frozen=True)
class MobileViTConfig:
    """A complete MobileViT v1 network."""

    name: str
    stages: tuple[StageConfig, ...]
    stem_channels: int = 16
    last_exp_factor: int = 4  # final 1x1 conv: channels = last_exp_factor * stages[-1].out_channels
    num_heads: int = 4
    patch_size: int = 2
    num_classes: int = 1000
    head_dropout: float = 0.1
    preprocessing: Preprocessing = Preprocessing()
    public: PublicMetadata | None = None

    @property
    def input_size(self) -> int:
        """The size the public weights were evaluated at (the preprocessing crop)."""
        return self.preprocessing.crop_size

    @property
    def head_channels(self) -> int:
        return self.last_exp_factor * self.stages[-1].out_channels

    @property
    def stage_channels(self) -> tuple[int, ...]:
        return tuple(s.out_channels for s in self.stages)

    @property
    def size_multiple(self) -> int:
        """Input sizes must be multiples of this: total stride 32 and 2x2 patches at every ViT stage."""
        return 32


def _mv2(out: int, stride: int, blocks: int, expand: int) -> StageConfig:
    return StageConfig(StageKind.MV2, out, stride, expand, num_blocks=blocks)


def _vit(out: int, stride: int, dim: int, ffn: int, layers: int, expand: int) -> StageConfig:
    return StageConfig(StageKind.VIT, out, stride, expand, transformer_dim=dim, ffn_dim=ffn,
                       num_layers=layers)


VARIANTS: dict[str, MobileViTConfig] = {
    "xx_small": MobileViTConfig(
        name="xx_small",
        stages=(_mv2(16, 1, 1, 2), _mv2(24, 2, 3, 2), _vit(48, 2, 64, 128, 2, 2),
                _vit(64, 2, 80, 160, 4, 2), _vit(80, 2, 96, 192, 3, 2)),
        public=PublicMetadata(1.27, 0.42, 69.02, 88.91, {
            "mmpretrain": "mobilevit-xxsmall_3rdparty_in1k_20221018-77835605.pth",
            "cvnets": "mobilevit_xxs.pt",
            "timm": "mobilevit_xxs.cvnets_in1k",
            "huggingface": "apple/mobilevit-xx-small",
        }),
    ),
    "x_small": MobileViTConfig(
        name="x_small",
        stages=(_mv2(32, 1, 1, 4), _mv2(48, 2, 3, 4), _vit(64, 2, 96, 192, 2, 4),
                _vit(80, 2, 120, 240, 4, 4), _vit(96, 2, 144, 288, 3, 4)),
        public=PublicMetadata(2.32, 1.05, 74.75, 92.32, {
            "mmpretrain": "mobilevit-xsmall_3rdparty_in1k_20221018-be39a6e7.pth",
            "cvnets": "mobilevit_xs.pt",
            "timm": "mobilevit_xs.cvnets_in1k",
            "huggingface": "apple/mobilevit-x-small",
        }),
    ),
    "small": MobileViTConfig(
        name="small",
        stages=(_mv2(32, 1, 1, 4), _mv2(64, 2, 3, 4), _vit(96, 2, 144, 288, 2, 4),
                _vit(128, 2, 192, 384, 4, 4), _vit(160, 2, 240, 480, 3, 4)),
        public=PublicMetadata(5.58, 2.03, 78.25, 94.09, {
            "mmpretrain": "mobilevit-small_3rdparty_in1k_20221018-cb4f741c.pth",
            "cvnets": "mobilevit_s.pt",
            "timm": "mobilevit_s.cvnets_in1k",
            "huggingface": "apple/mobilevit-small",
        }),
    ),
}


class UnknownVariantError(ValueError):
    """A variant name that is not in ``VARIANTS``."""


def get_config(name: str, **overrides) -> MobileViTConfig:
    """Look up a variant by name (``xx_small``/``x_small``/``small``; ``-`` and case are ignored)."""
    key = name.strip().lower().replace("-", "_")
    if key not in VARIANTS:
        raise UnknownVariantError(
            f"unknown MobileViT variant {name!r}; choose one of: {', '.join(VARIANTS)}")
    cfg = VARIANTS[key]
    if overrides:
        from dataclasses import replace
        cfg = replace(cfg, **overrides)
    return cfg
