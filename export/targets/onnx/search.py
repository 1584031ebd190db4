"""The int8 search on ONNX (``export.int8search``): any set of layers int8 on one calibration, measured in
onnxruntime on held-out photos; each layer's drift alone and its time saving from onnxruntime's profiler."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .convert import convert_onnx_precision, layer_nodes
from .runner import OnnxRuntimeRunner


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-row cosine of two ``[N, C]`` logit arrays."""
    a, b = a.astype(np.float64), b.astype(np.float64)
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-30)


class OnnxLayerSearch:
    """An fp32 ONNX model of ``model`` (``export.convert``'s, so its nodes match the layers), calibration photos
    and held-out photos; :meth:`quantize` makes an int8 model of any layer set, :meth:`evaluate` its figures."""

    def __init__(self, model: torch.nn.Module, fp32: Path, calibration: np.ndarray, heldout: np.ndarray,
                 work: Path, labels: np.ndarray | None = None, threads: int = 1):
        import onnx

        self.fp32, self.work, self.threads = Path(fp32), Path(work), threads
        self.work.mkdir(parents=True, exist_ok=True)
        self.nodes = {layer.name: ids for layer, ids in layer_nodes(onnx.load(str(fp32)), model)}
        self.layers = list(self.nodes)
        self.calibration, self.heldout, self.labels = calibration, heldout, labels
        self.cache = self.work / "calibration.json"  # onnxruntime's ranges: calibrated once, by the first call
        self.reference = OnnxRuntimeRunner(self.fp32, threads)(heldout)
        self.n = 0

    def quantize(self, int8_layers: list[str]) -> Path:
        """An int8 model with ``int8_layers`` int8 and everything else float (its file in ``work``)."""
        self.n += 1
        out = self.work / f"int8_{self.n}.onnx"
        nodes = [i for name in int8_layers for i in self.nodes[name]]
        return convert_onnx_precision(self.fp32, out, "int8", calibration=self.calibration, int8_nodes=nodes,
                                      calibration_cache=self.cache)

    def figures(self, path: Path) -> dict:
        logits = OnnxRuntimeRunner(path, self.threads)(self.heldout)
        cos = cosines(logits, self.reference)
        out = {"cosine": float(cos.mean()), "worst_cosine": float(cos.min()),
               "agreement_top1": float((logits.argmax(1) == self.reference.argmax(1)).mean())}
        if self.labels is not None:
            out["top1_drop"] = 100 * float((self.reference.argmax(1) == self.labels).mean()
                                           - (logits.argmax(1) == self.labels).mean())
        return out

    def evaluate(self, float_layers: list[str]) -> dict:
        """Held-out figures with every layer int8 except ``float_layers``."""
        keep = set(float_layers)
        int8 = [name for name in self.layers if name not in keep]
        if not int8:
            return self.figures(self.fp32)
        path = self.quantize(int8)
        try:
            return self.figures(path)
        finally:
            path.unlink()

    def sensitivity(self, layers: list[str] | None = None) -> dict[str, float]:
        """Each layer's drift (1 - mean cosine) with it alone int8."""
        out = {}
        for name in layers or self.layers:
            path = self.quantize([name])
            try:
                out[name] = 1.0 - self.figures(path)["cosine"]
            finally:
                path.unlink()
        return out
