"""The ONNX graph inspector: op counts, ranks, inputs and outputs (``export.graph.GraphReport``)."""
from __future__ import annotations

from collections import Counter
from pathlib import Path

from ...graph import GraphReport, _io, _report

FORMAT = "onnx"
# ops whose only job is computing shapes at run time
SHAPE_OPS = {"Shape", "Size", "ConstantOfShape", "Range", "Gather", "NonZero"}


def inspect_onnx(path: str | Path) -> GraphReport:
    import onnx

    model = onnx.shape_inference.infer_shapes(onnx.load(str(path)))
    ops = Counter(n.op_type for n in model.graph.node)
    values = list(model.graph.value_info) + list(model.graph.input) + list(model.graph.output)
    ranks = [len(v.type.tensor_type.shape.dim) for v in values if v.type.HasField("tensor_type")]
    ranks += [len(t.dims) for t in model.graph.initializer]

    def io(v):
        dims = [d.dim_value if d.HasField("dim_value") else d.dim_param or "?" for d in v.type.tensor_type.shape.dim]
        return _io(v.name, dims, onnx.helper.tensor_dtype_to_np_dtype(v.type.tensor_type.elem_type).name)

    return _report(FORMAT, ops, max(ranks, default=0), "Transpose", map(io, model.graph.input),
                   map(io, model.graph.output), shape_ops=SHAPE_OPS)
