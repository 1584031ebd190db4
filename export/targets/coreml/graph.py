"""The Core ML ML-program inspector (MIL ops, ranks, image or multiarray I/O)."""
from __future__ import annotations

from collections import Counter
from pathlib import Path

from ...graph import GraphReport, _io, _report

FORMAT = "coreml"
# ops whose only job is computing shapes at run time
SHAPE_OPS = {"shape", "gather", "floor_div", "range_1d", "fill"}


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

    return _report(FORMAT, ops, max(ranks, default=0), "transpose", map(io, spec.description.input),
                   map(io, spec.description.output), shape_ops=SHAPE_OPS)
