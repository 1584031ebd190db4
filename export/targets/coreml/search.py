"""The int8 search on Core ML w8a8 (``export.int8search``): any set of conv / linear layers with int8 activations
and weights (coremltools' passes), on one conversion and one calibration, measured in Core ML (macOS) or in the
reference executor (elsewhere) on held-out photos.

coremltools never quantizes ``matmul``, so the attention products stay fp16 and are not searched. The reference
executor computes Core ML's numbers but not its speed, so off macOS the search maximises the multiply-accumulates
in int8 (``--int8-objective macs``, the default there): a phone's Neural Engine runs int8 activations, and this
machine cannot time it."""
from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import torch

from ...int8search import LayerSearch, choose
from ...quiet import quiet
from .program import (
    CoreMLOptions,
    _calibration_feeds,
    activation_ranges,
    float_program,
    layer_matches,
    quantize_w8a8,
    w8a8_configs,
)
from .runner import runner_class


class CoreMLLayerSearch(LayerSearch):
    """``model`` (as the converter gets it), its fp32 ML program (the reference), its fp16 program before
    quantization, and the activation ranges of that program on the calibration photos (measured once, as the
    export measures them); :meth:`quantize` inserts int8 activations and weights for any set of layers and saves
    the ``.mlpackage``."""

    measured_in = "the set's w8a8 ML program (coremltools' quantization passes, one calibration), in {runtime}"

    def __init__(self, model: torch.nn.Module, fp32: Path, base, calibration: np.ndarray, heldout: np.ndarray,
                 work: Path, labels: np.ndarray | None = None, threads: int = 1):
        self.runner = runner_class()  # Core ML on macOS, else the reference executor
        self.measured_in = self.measured_in.format(runtime=self.runner.runtime)
        self.base = base  # the fp16 iOS 17 program, unquantized
        matches = [(layer, ids) for layer, ids in layer_matches(base.get_spec(), model) if layer.weighted]
        self.ops = {layer.name: ids for layer, ids in matches}
        super().__init__(model, fp32, list(self.ops), {layer.name: layer.kind for layer, _ in matches}, heldout,
                         work, labels, threads)
        path = self.work / "float.mlpackage"
        base.save(str(path))
        self.stats = activation_ranges(path, _calibration_feeds(calibration, "tensor", CoreMLOptions().preprocessing))
        self.n = 0

    def quantize(self, int8_layers: list[str]) -> Path:
        self.n += 1
        path = self.work / f"w8a8_{self.n}.mlpackage"
        configs = w8a8_configs({}, only_ops=[i for name in int8_layers for i in self.ops[name]])
        with quiet(stderr=True):  # coremltools' progress bars
            quantize_w8a8(self.base, [], *configs, stats=self.stats).save(str(path))
        return path


def layer_search(model: torch.nn.Module, calibration: np.ndarray, heldout: np.ndarray, work: Path,
                 size: int) -> CoreMLLayerSearch:
    """The registry's ``int8_search`` hook: ``model`` with this target's rewrites (as the converter gets it)."""
    from mobilevit.rewrites import apply_rewrites

    from ...config import target_config

    model = apply_rewrites(copy.deepcopy(model), target_config("coreml").rewrites).eval()
    return _search(model, calibration, heldout, Path(work), size)


def _search(model: torch.nn.Module, calibration: np.ndarray, heldout: np.ndarray, work: Path, size: int,
            labels: np.ndarray | None = None) -> CoreMLLayerSearch:
    from ...config import target_config

    opts = CoreMLOptions(**target_config("coreml").logits_options)  # logits out: the figures are logit cosines
    work.mkdir(parents=True, exist_ok=True)
    fp32 = work / "fp32.mlpackage"
    with quiet(stderr=True):
        float_program(model, "fp32", (size,), opts).save(str(fp32))
        base = float_program(model, "w8a8", (size,), opts)
    return CoreMLLayerSearch(model, fp32, base, calibration, heldout, work / "search", labels)


def search_int8(model: torch.nn.Module, calibration: np.ndarray, budget: str, work: Path, size: int,
                labels: tuple[int, ...] | None = None, objective: str | None = None
                ) -> tuple[list[str], np.ndarray, dict]:
    """``(int8 layers, calibration photos, record)``: the layers of ``model`` this checkpoint keeps int8 under
    ``budget`` (``export.int8search.choose``), and the photos that calibrated the search (the export calibrates
    on them too: the search's held-out photos stay unseen)."""
    _, int8, calib, record = choose(lambda c, h, y: _search(model, c, h, Path(work), size, y), model, size,
                                    calibration, budget, "coreml", "w8a8", labels, objective)
    return int8, calib, record
