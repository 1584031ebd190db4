"""One small config per export target, and the tolerance table every validation uses.

Default patch strategies and attention layouts were chosen by measurement (README, "Patch
strategies"): each target gets the rewrite that converted cleanly, validated, and ran fastest.
``split`` attention (heads as channel slices) is exactly equal to the public ``batched`` layout
and needs 1 transpose per transformer layer instead of 4; for Core ML it also follows
ml-ane-transformers' principle of splitting heads into separate ops.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum


class Target(str, Enum):
    COREML = "coreml"
    ONNX = "onnx"
    TFLITE = "tflite"


@dataclass(frozen=True)
class Tolerance:
    """Limits on drift from PyTorch fp32 over the validation photographs.

    ``max_abs_rel`` is max |artifact - torch| divided by max |torch| (logit scale differs between
    checkpoints); ``top1_min`` is the fraction of photos whose top-1 class must agree.
    """

    max_abs_rel: float
    cosine_min: float
    top1_min: float


# (target, precision) -> tolerance. One visible table: change a limit here, nowhere else.
TOLERANCES: dict[tuple[str, str], Tolerance] = {
    ("onnx", "fp32"): Tolerance(1e-4, 0.99999, 1.0),
    ("onnx", "fp16"): Tolerance(2e-2, 0.999, 0.9),
    ("onnx", "int8"): Tolerance(0.5, 0.95, 0.6),
    ("onnx", "int8_dynamic"): Tolerance(0.5, 0.95, 0.6),
    ("tflite", "fp32"): Tolerance(1e-4, 0.99999, 1.0),
    ("tflite", "fp16"): Tolerance(2e-2, 0.999, 0.9),
    ("tflite", "int8_dynamic"): Tolerance(0.5, 0.95, 0.6),
    ("tflite", "int8"): Tolerance(0.6, 0.9, 0.5),
    ("coreml", "fp32"): Tolerance(1e-4, 0.99999, 1.0),
    ("coreml", "fp16"): Tolerance(5e-2, 0.999, 0.9),
    ("coreml", "int8"): Tolerance(0.2, 0.99, 0.8),
    ("coreml", "palettize8"): Tolerance(0.2, 0.99, 0.8),
}


@dataclass(frozen=True)
class TargetConfig:
    """What a target accepts and what it does by default."""

    target: Target
    precisions: tuple[str, ...]
    default_precision: str
    default_patches: str
    default_attention: str
    suffix: str
    notes: str = ""
    extra: dict = field(default_factory=dict)


TARGETS: dict[str, TargetConfig] = {
    "coreml": TargetConfig(
        Target.COREML, ("fp16", "fp32", "int8", "palettize8"), "fp16", "pixel_shuffle", "split", ".mlpackage",
        "ML program; image input (BGR, scale 1/255) and classifier output by default; "
        "int8 = 8-bit linear weight quantization, palettize8 = 8-bit k-means palettization "
        "(both on fp16 compute)."),
    "onnx": TargetConfig(
        Target.ONNX, ("fp32", "fp16", "int8", "int8_dynamic"), "fp32", "slice", "split", ".onnx",
        "opset 18, single file, dynamic batch; int8 = static QDQ calibrated on real photos, "
        "int8_dynamic = dynamic quantization of MatMul/Gemm weights."),
    "tflite": TargetConfig(
        Target.TFLITE, ("fp32", "fp16", "int8_dynamic", "int8"), "fp32", "slice", "split", ".tflite",
        "via onnx2tf; NHWC input; int8_dynamic = dynamic-range weights, "
        "int8 = full integer with a representative dataset of real photos (float I/O)."),
}

# Sizes a multi-scale Core ML model accepts by default (the paper's 160..320 range).
DEFAULT_ENUMERATED_SIZES = (160, 192, 224, 256, 288, 320)


class ExportConfigError(ValueError):
    """A request the exporter cannot honour (unknown target/precision/strategy, bad size)."""


def target_config(name: str) -> TargetConfig:
    if name not in TARGETS:
        raise ExportConfigError(f"unknown target {name!r}; choose one of: {', '.join(TARGETS)}")
    return TARGETS[name]


def check_precision(target: str, precision: str) -> str:
    cfg = target_config(target)
    if precision not in cfg.precisions:
        raise ExportConfigError(
            f"precision {precision!r} is not available for {target}; choose one of: "
            f"{', '.join(cfg.precisions)}")
    return precision


def tolerance(target: str, precision: str) -> Tolerance:
    return TOLERANCES[(target, precision)]
