"""The int8 search on ExecuTorch (``export.int8search``): any set of layers int8 by PT2E with the XNNPACK
quantizer, on one export of the model.

Lowering a program to XNNPACK takes about 20 s for xx_small (``to_edge_transform_and_lower``'s passes), so the
search measures layer sets in simulation (the PT2E program in torch, about 3 s a set), times layers from two
ExecuTorch profiles (fp32 and all-int8), and lowers only the programs it publishes or times; the manifest records
the published program's own held-out figures beside the simulated ones."""
from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import torch

from ...int8search import LayerSearch, choose
from ...quiet import quiet
from .program import INT8_OPS, ExecuTorchOptions, _export, lower, node_layer, pt2e_int8, quantize_int8, to_pte
from .runner import ExecuTorchRunner


def graph_layers(graph: torch.fx.Graph) -> list[str]:
    """The ``mobilevit.layers`` layers the exported graph's conv / linear / bmm nodes compute, in graph order."""
    seen: dict[str, None] = {}
    for node in graph.nodes:
        if node.op == "call_function" and node.target in INT8_OPS:
            layer = node_layer(node)
            if layer is not None:
                seen.setdefault(layer)
    return list(seen)


# XNNPACK's operator events (``profile.op_events``) for the graph's conv / linear / bmm nodes, by node op
GEMM_EVENTS = {torch.ops.aten.conv2d.default: ("Convolution", "Fully Connected"),  # a 1x1 conv runs as one
               torch.ops.aten.linear.default: ("Fully Connected",),
               torch.ops.aten.bmm.default: ("Batch Matrix Multiply",)}
CONVERT_EVENT = "Convert"  # XNNPACK's float <-> int8 conversion: the cost of entering and leaving int8


def layer_times(graph: torch.fx.Graph, events: list[tuple[str, float]], int8_layers: set[str] = frozenset()
                ) -> dict[str, float]:
    """Milliseconds per run of each layer in a profile of its lowered program (``profile.op_events``): the
    conv / linear / bmm nodes of ``graph`` (graph order) matched one to one to XNNPACK's GEMM-like events
    (execution order; one delegate runs its operators in graph order), and each conversion event charged to
    the nearest GEMM-like event of an ``int8_layers`` layer. A profile that does not line up with the graph
    raises ``ConversionError``."""
    from ...errors import ConversionError

    nodes = [n for n in graph.nodes if n.op == "call_function" and n.target in GEMM_EVENTS]
    gemm = [i for i, (name, _) in enumerate(events) if any(name.startswith(e) for es in GEMM_EVENTS.values()
                                                          for e in es)]
    if len(gemm) != len(nodes):
        raise ConversionError(f"the ExecuTorch profile has {len(gemm)} GEMM-like operator events for the graph's "
                              f"{len(nodes)} conv / linear / bmm nodes: cannot time its layers")
    owner: dict[int, str | None] = {}
    for i, node in zip(gemm, nodes):
        if not events[i][0].startswith(GEMM_EVENTS[node.target]):
            raise ConversionError(f"the ExecuTorch profile's event {events[i][0]!r} does not compute {node.name} "
                                  f"({node.target}): cannot time its layers")
        owner[i] = node_layer(node)
    out: dict[str, float] = {}
    for i, layer in owner.items():
        if layer is not None:
            out[layer] = out.get(layer, 0.0) + events[i][1]
    int8_events = [i for i, layer in owner.items() if layer in int8_layers]
    for j, (name, ms) in enumerate(events):
        if name.startswith(CONVERT_EVENT) and int8_events:
            nearest = min(int8_events, key=lambda i: (abs(i - j), i))
            out[owner[nearest]] += ms
    return out


class ExecuTorchLayerSearch(LayerSearch):
    """``model`` (the registry's rewrites applied, as the converter gets it), its fp32 ``.pte``, calibration and
    held-out photos. Lowering a program to XNNPACK takes about 20 s (xx_small), so a layer set is *measured* in
    simulation: the PT2E program (``program.pt2e_int8``, the same quantizer and calibration) run in torch with
    its quantize / dequantize ops (:meth:`measure`); :meth:`quantize` lowers a set for real (the artifact, and the
    timing). What a layer's int8 saves is read from two ExecuTorch profiles, of the fp32 and the all-int8 program
    (:meth:`gains`)."""

    runner = ExecuTorchRunner
    measured_in = "simulation: the set's PT2E program run in torch (its quantize / dequantize ops)"
    timed_by = ("the layer's time in an ExecuTorch profile (ETDump) of the fp32 program less its time in one of the "
                "all-int8 program, conversions charged to the nearest int8 layer")

    def __init__(self, model: torch.nn.Module, fp32: Path, calibration: np.ndarray, heldout: np.ndarray, work: Path,
                 labels: np.ndarray | None = None, threads: int = 1):
        from mobilevit.layers import kind_of

        self.example = torch.zeros(1, *heldout.shape[1:])
        with quiet(stderr=True):
            self.graph = _export(model, self.example).module()
        names = graph_layers(self.graph.graph)
        super().__init__(model, fp32, names, {n: kind_of(n) for n in names}, heldout, work, labels, threads)
        self.calibration = calibration
        self.options = ExecuTorchOptions()
        self.n = 0

    def quantize(self, int8_layers: list[str]) -> Path:
        self.n += 1
        keep = set(int8_layers)
        with quiet(stderr=True):
            program = quantize_int8(copy.deepcopy(self.graph), self.example, self.calibration, keep.__contains__)
        return lower(program, "int8", self.work / f"int8_{self.n}.pte", self.options)

    def simulate(self, int8_layers: list[str]) -> np.ndarray:
        """Held-out logits of the PT2E program with ``int8_layers`` int8, run in torch (one photo at a time: the
        program takes batch 1)."""
        keep = set(int8_layers)
        with quiet(stderr=True):
            program = pt2e_int8(copy.deepcopy(self.graph), self.calibration, keep.__contains__)
            with torch.no_grad():
                return np.concatenate([program(torch.from_numpy(np.ascontiguousarray(x[None], dtype=np.float32)))
                                       .numpy() for x in self.heldout])

    def measure(self, int8_layers: list[str]) -> dict:
        return self.scores(self.simulate(int8_layers))

    def gains(self, macs: dict[str, int], runs: int = 30) -> dict[str, float]:
        """Milliseconds each layer's int8 saves: its time in a profile of the fp32 program less its time in one of
        the all-int8 program, the conversions into and out of int8 charged to the nearest int8 layer
        (:func:`layer_times`). Per layer, from two lowered programs (not one per kind); ``macs`` is unused."""
        from .profile import op_events

        all8 = self.quantize(self.layers)
        try:
            fp32 = layer_times(self.graph.graph, op_events(self.fp32, self.heldout[:1], 1, runs))
            int8 = layer_times(self.graph.graph, op_events(all8, self.heldout[:1], 1, runs), set(self.layers))
        finally:
            all8.unlink()
        return {n: fp32.get(n, 0.0) - int8.get(n, 0.0) for n in self.layers}


def layer_search(model: torch.nn.Module, calibration: np.ndarray, heldout: np.ndarray, work: Path,
                 size: int) -> ExecuTorchLayerSearch:
    """The registry's ``int8_search`` hook: ``model`` with this target's rewrites (as the converter gets it), its
    fp32 ``.pte``, and the search over its layers."""
    from mobilevit.rewrites import apply_rewrites

    from ...config import target_config

    model = apply_rewrites(copy.deepcopy(model), target_config("executorch").rewrites).eval()
    return ExecuTorchLayerSearch(model, _fp32(model, work, size), calibration, heldout, Path(work) / "search")


def _fp32(model: torch.nn.Module, work: Path, size: int) -> Path:
    """The fp32 ``.pte`` of ``model`` the search measures against, as the converter makes it."""
    Path(work).mkdir(parents=True, exist_ok=True)
    return to_pte(model, "fp32", Path(work) / "fp32.pte", size=size, calibration=None, options=ExecuTorchOptions())


def search_int8(model: torch.nn.Module, calibration: np.ndarray, budget: str, work: Path, size: int, out: Path,
                labels: tuple[int, ...] | None = None, objective: str = "speed",
                fp32: Path | None = None) -> tuple[Path, dict]:
    """``(out, record)``: the int8 ``.pte`` with the layers this checkpoint keeps int8 under ``budget``
    (``export.int8search.choose``, on simulated figures), calibrated on the photos the search did not hold out.
    ``fp32``: the export's own fp32 program of ``model``, if it made one (else lowered here). The record adds the
    lowered program's own held-out figures (``runtime_figures``): how well the simulation predicted it."""
    fp32 = fp32 or _fp32(model, work, size)
    s, int8, _, record = choose(lambda c, h, y: ExecuTorchLayerSearch(model, fp32, c, h, Path(work) / "search",
                                                                      labels=y),
                                model, size, calibration, budget, "executorch", "int8", labels, objective)
    Path(s.quantize(int8)).replace(out)
    record["runtime_figures"] = s.figures(out)
    return out, record
