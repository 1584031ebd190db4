"""The TFLite graph inspector (LiteRT's op details) as an ``export.graph.GraphReport``."""
from __future__ import annotations

from collections import Counter
from pathlib import Path

from ...graph import GraphReport, _io, _report

FORMAT = "tflite"
# ops whose only job is computing shapes at run time
SHAPE_OPS = {"SHAPE", "RANGE", "FILL", "GATHER", "GATHER_ND"}


def inspect_tflite(path: str | Path) -> GraphReport:
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=str(path))
    ops = Counter(d["op_name"] for d in interp._get_ops_details())
    ranks = [len(t["shape"]) for t in interp.get_tensor_details()]

    def io(d):
        return _io(d["name"], [int(v) for v in d["shape_signature"]], d["dtype"].__name__)

    return _report(FORMAT, ops, max(ranks, default=0), "TRANSPOSE", map(io, interp.get_input_details()),
                   map(io, interp.get_output_details()), shape_ops=SHAPE_OPS)
