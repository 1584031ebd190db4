"""Inspect exported graphs: inputs and outputs, op counts, the largest tensor rank, shape-computing ops.

Converters handle MobileViT best when no tensor exceeds rank 4 (Core ML refuses rank > 5) and a
static-shape graph computes no shapes at run time. Tests assert both on every artifact.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path


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


def _report(fmt: str, ops: Counter, max_rank: int, transpose_name: str, inputs=(), outputs=(), *,
            shape_ops: frozenset[str] | set[str] = frozenset()) -> GraphReport:
    """A report from op counts; ``shape_ops`` are the format's ops that only compute shapes at run time
    (each target's inspector names its own)."""
    shape_ops = {k: v for k, v in ops.items() if k in shape_ops}
    return GraphReport(fmt, sum(ops.values()), ops.get(transpose_name, 0), max_rank, shape_ops,
                       dict(ops.most_common()), list(inputs), list(outputs))


def inspect(path: str | Path) -> GraphReport:
    """The inspector of the target whose artifacts end like ``path`` (``export.config.TARGETS``)."""
    from .config import load, target_for_path

    return load(target_for_path(path).inspector)(path)
