"""Drift localisation: find the first stage where an artifact's drift from PyTorch appears.

For a row whose drift exceeds its tolerance, the same conversion is repeated on truncated models
(``features_only=True, out_indices=(k,)``, sharing the weights) for each of the five stages, and
each stage's output is compared with PyTorch's. The first stage that breaks the tolerance is where
to look. ONNX and Core ML truncations convert in seconds; TFLite (onnx2tf, ~1 min per stage) only
when asked (``--localize-tflite``).
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import torch

from export.config import Tolerance
from export.validate import drift, failures
from mobilevit import MobileViT


class _Flat(torch.nn.Module):
    """Stage ``k`` output, flattened to ``[B, C*H*W]`` so the usual drift metrics apply."""

    def __init__(self, model: MobileViT, k: int):
        super().__init__()
        self.body = MobileViT(model.cfg, patches=model.patches, features_only=True, out_indices=(k,)).eval()
        self.body.load_state_dict({n: t for n, t in model.state_dict().items() if n.startswith(("stem", "stages"))})
        from mobilevit.model import Attention

        layout = next((m.layout for m in model.modules() if isinstance(m, Attention)), "batched")
        self.body.set_attention(layout)

    def forward(self, x):
        return self.body(x)[0].flatten(1)


def _convert_and_run(target: str, precision: str, module: torch.nn.Module, x: np.ndarray, calib: np.ndarray,
                     work: Path) -> np.ndarray:
    from export.runners import make_runner

    if target == "onnx":
        from export.onnx import convert_onnx_precision, export_onnx

        fp32 = export_onnx(module, work / "stage_fp32.onnx")
        path = fp32 if precision == "fp32" else convert_onnx_precision(fp32, work / f"stage_{precision}.onnx",
                                                                        precision, calib)
    elif target == "tflite":
        from export.tflite import export_tflite

        path = export_tflite(module, work / "tfl", precisions=(precision,), calibration=calib)[precision]
    else:
        from export.coreml import CoreMLOptions, convert_coreml

        path = work / "stage.mlpackage"
        convert_coreml(module, CoreMLOptions(precision=precision, input_kind="tensor", output_kind="logits")).save(
            str(path))
    return make_runner(path, threads=2)(x)


def localize(model: MobileViT, target: str, precision: str, tol: Tolerance, x: np.ndarray,
             calib: np.ndarray) -> dict:
    """Per-stage drift and the first stage that breaks ``tol`` (``None`` if only the head does)."""
    stages = []
    first = None
    for k in range(len(model.cfg.stages)):
        module = _Flat(model, k)
        with torch.no_grad():
            ref = module(torch.from_numpy(x)).numpy()
        with tempfile.TemporaryDirectory() as tmp:
            out = _convert_and_run(target, precision, module, x, calib, Path(tmp))
        d = drift(ref, out.reshape(ref.shape))
        bad = failures(d, tol, f"stage {k}")
        stages.append({"stage": k, "cosine_min": d.cosine_min, "max_abs_rel": d.max_abs_rel, "ok": not bad})
        if bad and first is None:
            first = k
            break
    return {"first_bad_stage": first, "stages": stages,
            "message": (f"drift appears in stage {first} (stride {2 ** (first + 1)})" if first is not None else
                        "every stage is within tolerance: the drift appears in the head (1x1 conv, pool, linear)")}
