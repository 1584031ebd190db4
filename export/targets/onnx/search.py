"""The int8 search on ONNX (``export.int8search``): any set of layers int8 on one calibration, measured in
onnxruntime on held-out photos."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ...int8search import LayerSearch, choose
from .quantize import convert_onnx_precision, layer_nodes
from .runner import OnnxRuntimeRunner


class OnnxLayerSearch(LayerSearch):
    """An fp32 ONNX model of ``model`` (``export.convert``'s, so its nodes match the layers), calibration photos
    and held-out photos; :meth:`quantize` makes an int8 model of any layer set (static QDQ, onnxruntime's
    calibration of the whole model cached after the first)."""

    runner = OnnxRuntimeRunner

    def __init__(self, model: torch.nn.Module, fp32: Path, calibration: np.ndarray, heldout: np.ndarray,
                 work: Path, labels: np.ndarray | None = None, threads: int = 1):
        import onnx

        matches = layer_nodes(onnx.load(str(fp32)), model)
        self.nodes = {layer.name: ids for layer, ids in matches}
        super().__init__(model, fp32, list(self.nodes), {layer.name: layer.kind for layer, _ in matches}, heldout, work,
                         labels, threads)
        self.calibration = calibration
        self.cache = self.work / "calibration.json"  # onnxruntime's ranges: calibrated once, by the first call
        self.n = 0

    def quantize(self, int8_layers: list[str]) -> Path:
        self.n += 1
        out = self.work / f"int8_{self.n}.onnx"
        nodes = [i for name in int8_layers for i in self.nodes[name]]
        return convert_onnx_precision(self.fp32, out, "int8", calibration=self.calibration, int8_nodes=nodes,
                                      calibration_cache=self.cache)


def layer_search(model: torch.nn.Module, calibration: np.ndarray, heldout: np.ndarray, work: Path,
                 size: int) -> OnnxLayerSearch:
    """The registry's ``int8_search`` hook: the fp32 ONNX model of ``model`` as ``export.convert`` makes it
    (same exporter, so its nodes match the layers), ready to quantize any layer set."""
    from ...convert import convert_all

    fp32 = convert_all(model, "onnx", ["fp32"], Path(work) / "fp32", size=size)["fp32"]
    return OnnxLayerSearch(model, fp32, calibration, heldout, Path(work) / "search")


def search_int8(model: torch.nn.Module, fp32: Path, calibration: np.ndarray, budget: str, work: Path,
                size: int, labels: tuple[int, ...] | None = None, objective: str = "speed"
                ) -> tuple[list[str], np.ndarray, dict]:
    """``(int8 node names, calibration photos, record)``: the layers this checkpoint keeps int8 under ``budget``
    (``export.int8search.choose``), as the nodes of ``fp32``."""
    s, int8, calib, record = choose(lambda c, h, y: OnnxLayerSearch(model, fp32, c, h, work, labels=y), model, size,
                                    calibration, budget, "onnx", "int8", labels, objective)
    return [i for n in int8 for i in s.nodes[n]], calib, record
