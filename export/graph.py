"""Inspect exported graphs: op counts, the largest tensor rank, shape-computing ops.

Converters handle MobileViT best when no tensor exceeds rank 4 (Core ML refuses rank > 5) and a
static-shape graph computes no shapes at run time. Tests assert both on every artifact.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

# Ops whose only job is computing shapes at run time, per format.
SHAPE_OPS = {
    "onnx": {"Shape", "Size", "ConstantOfShape", "Range", "Gather", "NonZero"},
    "tflite": {"SHAPE", "RANGE", "FILL", "GATHER", "GATHER_ND"},
    "coreml": {"shape", "gather", "floor_div", "range_1d", "fill"},
}


@dataclass
class GraphReport:
    """What a newcomer wants to know about an exported graph."""

    format: str
    nodes: int
    transposes: int
    max_rank: int
    shape_ops: dict[str, int]
    ops: dict[str, int]

    def to_dict(self) -> dict:
        return asdict(self)


def _report(fmt: str, ops: Counter, max_rank: int, transpose_name: str) -> GraphReport:
    shape_ops = {k: v for k, v in ops.items() if k in SHAPE_OPS[fmt]}
    return GraphReport(fmt, sum(ops.values()), ops.get(transpose_name, 0), max_rank, shape_ops,
                       dict(ops.most_common()))


def inspect_onnx(path: str | Path) -> GraphReport:
    import onnx

    model = onnx.shape_inference.infer_shapes(onnx.load(str(path)))
    ops = Counter(n.op_type for n in model.graph.node)
    values = list(model.graph.value_info) + list(model.graph.input) + list(model.graph.output)
    ranks = [len(v.type.tensor_type.shape.dim) for v in values if v.type.HasField("tensor_type")]
    ranks += [len(t.dims) for t in model.graph.initializer]
    return _report("onnx", ops, max(ranks, default=0), "Transpose")


def inspect_tflite(path: str | Path) -> GraphReport:
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=str(path))
    ops = Counter(d["op_name"] for d in interp._get_ops_details())
    ranks = [len(t["shape"]) for t in interp.get_tensor_details()]
    return _report("tflite", ops, max(ranks, default=0), "TRANSPOSE")


def _mil_ops(block):
    for op in block.operations:
        yield op
        for inner in op.blocks:
            yield from _mil_ops(inner)


def inspect_coreml(path: str | Path) -> GraphReport:
    import coremltools as ct

    spec = ct.utils.load_spec(str(path))
    main = spec.mlProgram.functions["main"]
    block = main.block_specializations[main.opset]
    ops, ranks = Counter(), []
    for op in _mil_ops(block):
        ops[op.type] += 1
        for out in op.outputs:
            if out.type.HasField("tensorType"):
                ranks.append(out.type.tensorType.rank)
    return _report("coreml", ops, max(ranks, default=0), "transpose")


def inspect(path: str | Path) -> GraphReport:
    """Dispatch on the suffix: ``.onnx``, ``.tflite`` or ``.mlpackage``."""
    suffix = Path(path).suffix
    if suffix == ".onnx":
        return inspect_onnx(path)
    if suffix == ".tflite":
        return inspect_tflite(path)
    if suffix in (".mlpackage", ".mlmodel"):
        return inspect_coreml(path)
    raise ValueError(f"cannot inspect {path}: unknown artifact type {suffix!r}")
