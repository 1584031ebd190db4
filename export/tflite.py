"""TFLite export through onnx2tf: fp32, fp16, dynamic-range int8 and full int8, NHWC input.

onnx2tf has traps (see ../shared/NOTES.md) that this module handles in one place:

* it downloads a calibration file unless ``calibration_image_sample_data_20x128x128x3_float32.npy``
  is in its working directory: we run it in a scratch folder holding one made from real photos;
* it runs ``onnxsim`` by name: the environment's ``bin`` goes first on ``PATH``;
* it rewrites its input ``.onnx`` in place: it gets a copy;
* it can be silently wrong: every output is validated by the caller (``export.validate``).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import ConversionError, ExportConfigError

# our precision name -> onnx2tf output file suffix
OUTPUT_SUFFIX = {
    "fp32": "_float32.tflite",
    "fp16": "_float16.tflite",
    "int8_dynamic": "_dynamic_range_quant.tflite",
    "int8": "_full_integer_quant.tflite",
}
CALIBRATION_FILE = "calibration_image_sample_data_20x128x128x3_float32.npy"


class TFLiteConversionError(ConversionError):
    """onnx2tf failed; the message carries the tail of its log."""


@dataclass(frozen=True)
class TFLiteOptions:
    """TFLite-only choices (keyword arguments of ``export.convert(model, "tflite", ...)``)."""

    exporter: str = "ours"  # the ONNX step: ours (torch.export, opset 18, onnxsim) | as-is (see export.onnx)

    def __post_init__(self):
        from .onnx import check_exporter

        check_exporter(self.exporter)


def convert(model, precisions: tuple[str, ...], workdir: Path, *, sizes: tuple[int, ...],
            calibration: np.ndarray | None, options: TFLiteOptions) -> dict[str, Path]:
    """PyTorch -> ONNX (static batch 1) -> one onnx2tf run -> ``{precision: .tflite}``."""
    from .onnx import export_fp32

    workdir = Path(workdir)
    with tempfile.TemporaryDirectory(prefix="tflite-onnx-", dir=workdir) as tmp:
        onnx_path = export_fp32(model, Path(tmp) / "model.onnx", size=sizes[0], exporter=options.exporter,
                                dynamic_batch=False)
        return onnx_to_tflite(onnx_path, workdir, precisions=precisions, calibration=calibration)


def _nhwc(images: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(images.transpose(0, 2, 3, 1)).astype(np.float32)  # [N,3,H,W] -> [N,H,W,3]


def _offline_calibration_file(folder: Path, images: np.ndarray) -> None:
    """onnx2tf's own 20x128x128x3 sample file, made from our photos so it never downloads it."""
    import torch
    import torch.nn.functional as F

    x = torch.from_numpy(images[:20].astype(np.float32))
    while len(x) < 20:
        x = torch.cat([x, x.flip(-1)])[:20]
    small = F.interpolate(x, size=(128, 128), mode="bilinear", align_corners=False).clamp(0, 1)
    np.save(folder / CALIBRATION_FILE, _nhwc(small.numpy()))  # [20, 128, 128, 3] in [0, 1]


def onnx_to_tflite(onnx_path: str | Path, out_dir: str | Path, *, precisions=("fp32", "fp16"),
                   calibration: np.ndarray | None = None, input_name: str = "input",
                   timeout: float = 1800, log=None) -> dict[str, Path]:
    """Convert an ONNX file with onnx2tf; return ``{precision: path}`` for the requested precisions.

    ``calibration`` is a float32 ``[N, 3, H, W]`` batch of real photos in the model's input
    format; it is required (it also feeds the offline calibration file, even for float exports).
    """
    unknown = set(precisions) - set(OUTPUT_SUFFIX)
    if unknown:
        raise ExportConfigError(f"unknown TFLite precision(s) {sorted(unknown)}; choose from {list(OUTPUT_SUFFIX)}")
    if calibration is None or len(calibration) == 0:
        raise ExportConfigError("onnx_to_tflite needs calibration photos (float32 [N, 3, H, W])")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="onnx2tf-", dir=out_dir) as tmp:
        work = Path(tmp)
        model = work / "model.onnx"
        shutil.copyfile(onnx_path, model)  # onnx2tf rewrites its input in place
        _offline_calibration_file(work, calibration)
        cmd = [str(Path(sys.executable).parent / "onnx2tf"), "-i", str(model), "-o", str(work / "out"),
               "-n", "-coion"]
        if {"int8", "int8_dynamic"} & set(precisions):
            np.save(work / "calib.npy", _nhwc(calibration))
            cmd += ["-oiqt", "-qt", "per-channel", "-cind", input_name, str(work / "calib.npy"),
                    "[[[[0.0,0.0,0.0]]]]", "[[[[1.0,1.0,1.0]]]]"]
        env = dict(os.environ)
        env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
        env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        proc = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True, timeout=timeout)
        if log is not None:
            log.write(proc.stdout[-4000:])
        results = {}
        for precision in precisions:
            produced = work / "out" / f"model{OUTPUT_SUFFIX[precision]}"
            if proc.returncode != 0 or not produced.exists():
                tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-25:])
                raise TFLiteConversionError(
                    f"onnx2tf did not produce the {precision} model (exit {proc.returncode}):\n{tail}")
            dest = out_dir / f"model_{precision}.tflite"
            shutil.move(str(produced), dest)
            results[precision] = dest
    return results
