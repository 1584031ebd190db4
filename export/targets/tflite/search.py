"""The TFLite int8 search's registry hook (``TargetConfig.int8_search``): a model through onnx2tf once, ready
for ``quantize.TFLiteLayerSearch`` to quantize any set of its layers."""
from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import torch

from .convert import onnx_to_tflite
from .quantize import TFLiteLayerSearch


def onnx2tf_files(model: torch.nn.Module, calibration: np.ndarray, work: Path, size: int) -> tuple[Path, Path]:
    """``(SavedModel, fp32 .tflite)`` of ``model`` from one onnx2tf run, as ``convert`` makes them."""
    from ..onnx.convert import export_fp32

    onnx_path = export_fp32(model, work / "model.onnx", size=size, dynamic_batch=False)
    saved = work / "saved_model"
    made = onnx_to_tflite(onnx_path, work / "onnx2tf", precisions=("fp32",), calibration=calibration,
                          saved_model=saved)
    return saved, made["fp32"]


def layer_search(model: torch.nn.Module, calibration: np.ndarray, heldout: np.ndarray, work: Path,
                 size: int) -> TFLiteLayerSearch:
    """The registry's ``int8_search`` hook: ``model`` through onnx2tf once (the model as given: its own channel
    order), ready to quantize any layer set."""
    work = Path(work)
    work.mkdir(parents=True, exist_ok=True)
    saved, fp32 = onnx2tf_files(model, calibration, Path(tempfile.mkdtemp(prefix="tflite-search-", dir=work)), size)
    return TFLiteLayerSearch(model, saved, fp32, calibration, heldout, work / "search")
