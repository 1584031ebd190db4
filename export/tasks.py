"""What an export does differently per task: ImageNet classification (the default) or segmentation.

Segmentation exports the DeepLabV3-MobileViT models (``mobilevit.segmentation``) through the same
conversion path as the classifiers. Here: the output forms a segmentation artifact can have, the
precisions offered (``export.config.SEGMENTATION_TOLERANCES``), and how its output is compared with
PyTorch's: the logits as a classifier's, then the class map at the input resolution, pixel by pixel
and by mean IoU.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn

from .errors import ExportConfigError

TASKS = ("classification", "segmentation")
# logits: [1, K, H/16, W/16] as the model computes them | classmap: [1, H, W] int32 class index per input pixel
SEGMENTATION_OUTPUTS = ("logits", "classmap")
# A 512x512 photo is 262,144 pixels to compare: fewer photos than a classifier's 16 say as much, in half the time.
SEGMENTATION_VALIDATION_IMAGES = 8


def check_task(task: str) -> str:
    if task not in TASKS:
        raise ExportConfigError(f"unknown task {task!r}; choose one of: {', '.join(TASKS)}")
    return task


def segmentation_precisions(target: str) -> tuple[str, ...]:
    """The precisions a segmentation export offers on ``target`` (the rows of its tolerance table)."""
    from .config import SEGMENTATION_TOLERANCES

    return tuple(p for t, p in SEGMENTATION_TOLERANCES if t == target)


def check_segmentation_precision(target: str, precision: str) -> None:
    offered = segmentation_precisions(target)
    if precision not in offered:
        raise ExportConfigError(
            f"segmentation is exported to {target} in {', '.join(offered)}, not {precision!r} (the int8 recipes "
            "are measured on the classifier's layers only); drop --precision or pick one of those")


class ClassMap(nn.Module):
    """A segmentation model whose output is the class index of every input pixel: logits upsampled to the
    input size (bilinear, as ``mobilevit.segmentation.upsample_logits``), then argmax over classes."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.cfg = model.cfg  # what the converters read (preprocessing, name); the TFLite target may replace it

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from mobilevit.segmentation import upsample_logits

        logits = self.model(x)  # [B, 3, H, W] -> [B, K, H/s, W/s]
        full = upsample_logits(logits, (x.shape[2], x.shape[3]))  # -> [B, K, H, W]
        return full.argmax(dim=1).to(torch.int32)  # -> [B, H, W]


def segmentation_output(model: nn.Module, output: str) -> nn.Module:
    """``model`` with the requested output form (:data:`SEGMENTATION_OUTPUTS`)."""
    if output not in SEGMENTATION_OUTPUTS:
        raise ExportConfigError(f"unknown segmentation output {output!r}; choose one of: "
                                f"{', '.join(SEGMENTATION_OUTPUTS)}")
    return ClassMap(model).eval() if output == "classmap" else model


@dataclass
class SegmentationDrift:
    """Drift of one segmentation artifact from PyTorch fp32 on the same photos."""

    images: int
    pixel_agreement_min: float  # worst photo: fraction of its pixels whose class equals PyTorch's
    pixel_agreement: float  # over all pixels of all photos
    miou: float  # mean over classes (present in either map) of IoU(artifact's pixels, PyTorch's pixels)
    # the logits (None for a class-map output): as a classifier's, each photo's logits flattened
    max_abs: float | None = None
    max_abs_rel: float | None = None
    mean_abs: float | None = None
    cosine_min: float | None = None
    cosine_mean: float | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def class_maps(y: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``[B, H, W]`` class indices from logits ``[B, K, h, w]`` (upsampled to ``size`` as the model's
    :class:`ClassMap` does) or from a class map ``[B, H, W]`` as it is."""
    y = np.asarray(y)
    if y.ndim == 3:
        return np.rint(y).astype(np.int64)
    from mobilevit.segmentation import upsample_logits

    with torch.no_grad():
        return upsample_logits(torch.from_numpy(np.asarray(y, np.float32)), size).argmax(1).numpy()  # [B, H, W]


def mean_iou(reference: np.ndarray, output: np.ndarray) -> float:
    """Mean IoU of two class maps, over the classes either one uses (pooled over all photos)."""
    ref, out = reference.reshape(-1), output.reshape(-1)
    ious = []
    for c in np.union1d(np.unique(ref), np.unique(out)):
        a, b = ref == c, out == c
        ious.append(np.logical_and(a, b).sum() / np.logical_or(a, b).sum())
    return float(np.mean(ious))


def segmentation_drift(reference: np.ndarray, output: np.ndarray, size: tuple[int, int]) -> SegmentationDrift:
    """Compare an artifact's output with PyTorch's: logits ``[B, K, h, w]`` or class maps ``[B, H, W]``."""
    ref, out = np.asarray(reference), np.asarray(output)
    if ref.shape != out.shape:
        raise ValueError(f"output shape {out.shape} differs from the reference {ref.shape}")
    maps_ref, maps_out = class_maps(ref, size), class_maps(out, size)
    same = (maps_ref == maps_out).reshape(len(ref), -1)  # [B, H*W]
    d = SegmentationDrift(images=int(len(ref)), pixel_agreement_min=float(same.mean(1).min()),
                          pixel_agreement=float(same.mean()), miou=mean_iou(maps_ref, maps_out))
    if ref.ndim == 4:  # logits
        r, o = ref.reshape(len(ref), -1).astype(np.float64), out.reshape(len(out), -1).astype(np.float64)
        diff = np.abs(o - r)
        cos = (r * o).sum(1) / np.maximum(np.linalg.norm(r, axis=1) * np.linalg.norm(o, axis=1), 1e-300)
        d.max_abs, d.mean_abs = float(diff.max()), float(diff.mean())
        d.max_abs_rel = float(diff.max() / max(np.abs(r).max(), 1e-12))
        d.cosine_min, d.cosine_mean = float(cos.min()), float(cos.mean())
    return d


def segmentation_failures(d: SegmentationDrift, tol, where: str) -> list[str]:
    """Each limit of ``tol`` (``export.config.SegmentationTolerance``) that ``d`` breaks, as a readable line."""
    out = []
    if d.max_abs is not None:
        if not np.isfinite(d.max_abs):
            return [f"{where}: output is not finite (NaN/inf)"]
        if d.max_abs_rel > tol.max_abs_rel:
            out.append(f"{where}: max abs logit diff {d.max_abs:.3g} is {d.max_abs_rel:.3g} of the logit range "
                       f"(limit {tol.max_abs_rel:g})")
        if d.cosine_min < tol.cosine_min:
            out.append(f"{where}: logit cosine similarity {d.cosine_min:.6f} (limit {tol.cosine_min})")
    if d.pixel_agreement_min < tol.pixel_min:
        out.append(f"{where}: {d.pixel_agreement_min:.2%} of one photo's pixels agree with PyTorch's class "
                   f"(limit {tol.pixel_min:.1%})")
    if d.miou < tol.miou_min:
        out.append(f"{where}: mean IoU with PyTorch's class map {d.miou:.4f} (limit {tol.miou_min})")
    return out
