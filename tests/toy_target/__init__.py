"""A fifth target for the architecture test: TorchScript (``torch.jit.trace``), a real runtime.

It exists to prove that a target is one package like this one plus one registry entry
(``tests/test_architecture.py``): ``ENTRY`` and its ``TOLERANCES`` rows are all the registry gets, and the
CLI, the pipeline, validation, publishing and the benchmark harness take it from there. The product's
targets live in ``export/targets/``.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from export.config import TargetConfig, Tolerance
from export.graph import GraphReport, _io
from export.runners import Runner

ENTRY = TargetConfig(
    "torchscript", ("fp32",), "fp32", "slice", "split", ".ts", converter="tests.toy_target:convert",
    options="tests.toy_target:Options", runner="tests.toy_target:runner", inspector="tests.toy_target:inspect",
    preload=("torch.jit",), metadata_options="tests.toy_target:metadata_options",
    notes="TorchScript through torch.jit.trace (a test target)")
TOLERANCES = {("torchscript", "fp32"): Tolerance(1e-5, 0.99999, 1.0)}


@dataclass(frozen=True)
class Options:
    """``freeze``: inline the weights as constants (``torch.jit.freeze``); ``labels``/``metadata`` come from the
    pipeline through ``metadata_options`` and are stored as the module's extra files."""

    freeze: bool = False
    labels: tuple[str, ...] | None = None
    metadata: tuple[tuple[str, str], ...] = ()


def metadata_options(*, task, output_kind, names, card, provenance, preprocessing) -> dict:
    return {"labels": tuple(names), "metadata": tuple(sorted(provenance.items()))}


def convert(model, precisions, workdir: Path, *, sizes, calibration, options: Options) -> dict[str, Path]:
    traced = torch.jit.trace(model.eval(), torch.zeros(1, 3, sizes[0], sizes[0]))
    if options.freeze:
        traced = torch.jit.freeze(traced)
    extra = {"labels.txt": "\n".join(options.labels or ()), "metadata.txt": repr(dict(options.metadata))}
    out = {}
    for p in precisions:
        out[p] = Path(workdir) / f"model_{p}.ts"
        torch.jit.save(traced, str(out[p]), _extra_files=extra)
    return out


class TorchScriptRunner(Runner):
    runtime = "torchscript"
    fixed_batch = False

    def __init__(self, path, threads: int = 2):
        super().__init__(path, threads)
        self.module = torch.jit.load(str(path))

    @property
    def version(self) -> str:
        return torch.__version__

    def prepare(self, x: np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(x))

    def run(self, feed) -> np.ndarray:
        with torch.no_grad():
            return self.module(feed).numpy()


def runner(path, threads: int = 2) -> Runner:
    return TorchScriptRunner(path, threads)


def inspect(path) -> GraphReport:
    graph = torch.jit.load(str(path)).inlined_graph
    ops = Counter(n.kind() for n in graph.nodes())

    def io(value):  # the traced tensor types carry their sizes
        t = value.type()
        return _io(value.debugName(), list(t.sizes() or []), str(t.dtype()).replace("torch.", ""))

    inputs = [io(v) for v in list(graph.inputs())[1:]]  # the first input is the module itself
    return GraphReport("torchscript", sum(ops.values()), ops.get("aten::transpose", 0), 4, {}, dict(ops),
                       inputs, [io(v) for v in graph.outputs()])
