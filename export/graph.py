"""Inspect exported graphs: inputs and outputs, op counts, the largest tensor rank, shape-computing ops.

Converters handle MobileViT best when no tensor exceeds rank 4 (Core ML refuses rank > 5) and a
static-shape graph computes no shapes at run time. Tests assert both on every artifact.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

# Ops whose only job is computing shapes at run time, per format.
SHAPE_OPS = {
    "onnx": {"Shape", "Size", "ConstantOfShape", "Range", "Gather", "NonZero"},
    "tflite": {"SHAPE", "RANGE", "FILL", "GATHER", "GATHER_ND"},
    "coreml": {"shape", "gather", "floor_div", "range_1d", "fill"},
    "executorch": {"aten::sym_size.int", "executorch_prim::floordiv.int", "aten::_local_scalar_dense.out"},
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
    # [{"name", "shape" (ints, or names for symbolic dims), "dtype", "layout"}], as the artifact declares them
    inputs: list[dict] = field(default_factory=list)
    outputs: list[dict] = field(default_factory=list)
    # delegated formats (ExecuTorch): {"segments", "backends": {id: calls}, "non_delegated_ops": {op: count}}
    delegation: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def _layout(shape: list) -> str:
    """NCHW or NHWC for a rank-4 image tensor (3 colour channels), else ``-``."""
    if len(shape) != 4:
        return "-"
    return "NHWC" if shape[-1] == 3 and shape[1] != 3 else "NCHW" if shape[1] == 3 else "-"


def _io(name: str, shape: list, dtype: str, layout: str | None = None) -> dict:
    return {"name": name, "shape": shape, "dtype": dtype, "layout": layout or _layout(shape)}


def _report(fmt: str, ops: Counter, max_rank: int, transpose_name: str, inputs=(), outputs=()) -> GraphReport:
    shape_ops = {k: v for k, v in ops.items() if k in SHAPE_OPS[fmt]}
    return GraphReport(fmt, sum(ops.values()), ops.get(transpose_name, 0), max_rank, shape_ops,
                       dict(ops.most_common()), list(inputs), list(outputs))


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

    return _report("onnx", ops, max(ranks, default=0), "Transpose", map(io, model.graph.input),
                   map(io, model.graph.output))


def inspect_tflite(path: str | Path) -> GraphReport:
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=str(path))
    ops = Counter(d["op_name"] for d in interp._get_ops_details())
    ranks = [len(t["shape"]) for t in interp.get_tensor_details()]

    def io(d):
        return _io(d["name"], [int(v) for v in d["shape_signature"]], d["dtype"].__name__)

    return _report("tflite", ops, max(ranks, default=0), "TRANSPOSE", map(io, interp.get_input_details()),
                   map(io, interp.get_output_details()))


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

    def io(f):
        t = f.type
        if t.HasField("imageType"):
            colour = ct.proto.FeatureTypes_pb2.ImageFeatureType.ColorSpace.Name(t.imageType.colorSpace)
            return _io(f.name, [t.imageType.height, t.imageType.width], f"image {colour}", "image")
        if t.HasField("multiArrayType"):
            return _io(f.name, list(t.multiArrayType.shape), "multiarray")
        return _io(f.name, [], t.WhichOneof("Type"))

    return _report("coreml", ops, max(ranks, default=0), "transpose", map(io, spec.description.input),
                   map(io, spec.description.output))


def inspect(path: str | Path) -> GraphReport:
    """The inspector of the target whose artifacts end like ``path`` (``export.config.TARGETS``)."""
    from .config import load, target_for_path

    return load(target_for_path(path).inspector)(path)
