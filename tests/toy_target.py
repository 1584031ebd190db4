"""A fourth target for the architecture test: TorchScript (``torch.jit.trace``), a real runtime.

It exists to prove that a target is one module like this one plus one registry entry
(``tests/test_architecture.py``); the product's targets live in ``export/``.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from export.graph import GraphReport
from export.runners import Runner


@dataclass(frozen=True)
class Options:
    """TorchScript has no options here."""


def convert(model, precisions, workdir: Path, *, sizes, calibration, options: Options) -> dict[str, Path]:
    traced = torch.jit.trace(model.eval(), torch.zeros(1, 3, sizes[0], sizes[0]))
    out = {}
    for p in precisions:
        out[p] = Path(workdir) / f"model_{p}.ts"
        traced.save(str(out[p]))
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
    return GraphReport("torchscript", sum(ops.values()), ops.get("aten::transpose", 0), 4, {}, dict(ops))
