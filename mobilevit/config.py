"""MobileViT v1 architecture as data: one frozen config type and one table of variants.

Each variant carries the public ImageNet-1k metadata of the Apple / mmpretrain / timm / Hugging
Face checkpoints, so a newcomer finds the numbers next to the architecture they describe.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
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
    dilation: int = 1  # of the first block's depthwise conv (> 1 only in a dilated backbone: see dilate)


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
        cfg = replace(cfg, **overrides)
    return cfg


# -------------------------------------------------------------------------------- segmentation
# PASCAL VOC 2012: background + 20 object classes, in the order of the public 21-class heads
# (ml-cvnets' VOC loader and the id2label of Hugging Face's apple/deeplabv3-mobilevit-* configs).
VOC_CLASSES: tuple[str, ...] = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor")

# The input size of the public segmentation checkpoints (trained and evaluated on 512x512 VOC crops).
SEGMENTATION_SIZE = 512


def dilate(cfg: MobileViTConfig, output_stride: int) -> MobileViTConfig:
    """``cfg`` with the stages past ``output_stride`` kept at that resolution, as DeepLab backbones do.

    Each such stage's strided inverted residual gets stride 1, and its depthwise conv the dilation
    accumulated by the strides removed *before* it (ml-cvnets ``_make_mit_layer``: ``prev_dilation``;
    transformers ``MobileViTLayer``: ``dilation // 2``). The MobileViT blocks themselves stay undilated.
    On MobileViT v1, output stride 16 (the public models) gives stage 4 stride 1 / dilation 1, so no backbone
    conv is actually dilated; output stride 8 also gives stage 3 stride 1 / dilation 1 and stage 4 dilation 2.
    """
    stride, dilation, stages = 2, 1, []  # the stem has stride 2
    for s in cfg.stages:
        if stride * s.stride > output_stride:
            stages.append(replace(s, stride=1, dilation=dilation))
            dilation *= s.stride
        else:
            stride *= s.stride
            stages.append(s)
    return replace(cfg, stages=tuple(stages))


@dataclass(frozen=True)
class SegmentationPublic:
    """Published PASCAL VOC 2012 val figures (512x512) and checkpoint names for a segmentation model."""

    params_m: float  # as the model cards and ml-cvnets round it
    miou: float  # mean IoU (%): the paper and the Hugging Face model cards
    miou_cvnets: float  # mean IoU (%) ml-cvnets reports for its released .pt (examples/README-mobilevit.md)
    checkpoints: dict[str, str] = field(default_factory=dict)  # format -> public file / model id


@dataclass(frozen=True)
class SegmentationConfig:
    """DeepLabV3 on a MobileViT v1 backbone (the public ``deeplabv3-mobilevit-*`` models).

    Defaults are the public models': ml-cvnets ``config/segmentation/deeplabv3_mobilevit_{xx_small,x_small,
    small}.yaml`` (@ d38a116f, released with the weights: ``output_stride: 16``, ``aspp_out_channels: 256``,
    ``aspp_rates: [6, 12, 18]``, ``aspp_dropout: 0.1``, ``classifier_dropout: 0.1``, no auxiliary head), which
    transformers' ``convert_mlcvnets_to_pytorch.py`` carries over (``config.output_stride = 16`` for
    ``deeplabv3_*``; its integration test expects 32x32 logits from a 512x512 input). ml-cvnets' later recipe
    ``config/segmentation/pascal_voc/deeplabv3_mobilevit.yaml`` (output stride 8, 512 ASPP channels, rates
    12/24/36, auxiliary head) is another model, with no released weights named in this table.
    """

    name: str
    backbone: MobileViTConfig  # the classification variant; dilated to ``output_stride`` when built
    num_classes: int = len(VOC_CLASSES)
    output_stride: int = 16  # logits come out at 1/output_stride of the input (32x32 for 512x512)
    aspp_out_channels: int = 256  # width of every ASPP branch, of its projection and of the classifier input
    atrous_rates: tuple[int, int, int] = (6, 12, 18)  # dilations of the three 3x3 ASPP branches
    aspp_dropout: float = 0.1  # after the ASPP projection
    classifier_dropout: float = 0.1  # Dropout2d before the 1x1 classifier
    # The model cards: 512x512 centre crop, pixels in [0, 1], BGR (the resize before the crop is taken to be
    # the short side to 512, which cannot be checked offline).
    preprocessing: Preprocessing = Preprocessing(resize_short_side=SEGMENTATION_SIZE, crop_size=SEGMENTATION_SIZE)
    public: SegmentationPublic | None = None

    def __post_init__(self):
        if self.output_stride not in (8, 16, 32):
            raise ValueError(f"output_stride {self.output_stride} is not supported; choose 8, 16 or 32 "
                             "(only the three MobileViT-block stages can be dilated)")
        if len(self.atrous_rates) != 3:
            raise ValueError(f"ASPP takes 3 atrous rates, got {self.atrous_rates}")
        if self.num_classes < 1:
            raise ValueError(f"num_classes must be positive, got {self.num_classes}")

    @property
    def input_size(self) -> int:
        return self.preprocessing.crop_size

    @property
    def dilated_backbone(self) -> MobileViTConfig:
        return dilate(self.backbone, self.output_stride)

    @property
    def class_names(self) -> tuple[str, ...]:
        """VOC's names for a 21-class head, ``class_i`` otherwise."""
        if self.num_classes == len(VOC_CLASSES):
            return VOC_CLASSES
        return tuple(f"class_{i}" for i in range(self.num_classes))


# ml-cvnets files live under https://docs-assets.developer.apple.com/ml-research/models/cvnets/segmentation/
SEGMENTATION_VARIANTS: dict[str, SegmentationConfig] = {
    "xx_small": SegmentationConfig("xx_small", VARIANTS["xx_small"], public=SegmentationPublic(1.9, 73.6, 72.8, {
        "cvnets": "deeplabv3_mobilevit_xxs.pt", "huggingface": "apple/deeplabv3-mobilevit-xx-small"})),
    "x_small": SegmentationConfig("x_small", VARIANTS["x_small"], public=SegmentationPublic(2.9, 77.1, 77.1, {
        "cvnets": "deeplabv3_mobilevit_xs.pt", "huggingface": "apple/deeplabv3-mobilevit-x-small"})),
    "small": SegmentationConfig("small", VARIANTS["small"], public=SegmentationPublic(6.4, 79.1, 79.3, {
        "cvnets": "deeplabv3_mobilevit_s.pt", "huggingface": "apple/deeplabv3-mobilevit-small"})),
}


def get_segmentation_config(name: str, **overrides) -> SegmentationConfig:
    """Look up a segmentation model by its backbone's name, e.g. ``get_segmentation_config("small", num_classes=5)``."""
    base = SEGMENTATION_VARIANTS[get_config(name).name]  # same names, same error for a bad one
    return replace(base, **overrides) if overrides else base
