"""Integer chains in the graph onnxruntime really runs: the float islands between int8 kernels.

A static int8 ONNX model is QDQ: every int8 layer sits between QuantizeLinear and DequantizeLinear.
onnxruntime's optimizer fuses what it can into integer kernels (QLinearConv, QLinearMatMul, QGemm, ...)
and leaves the rest float. Where an op between two int8 layers has no integer kernel, the chain breaks:
DequantizeLinear -> float op(s) -> QuantizeLinear, each break costing a Q/DQ pair and a float kernel.
:func:`int8_chains` reads the *optimized* graph (as the session builds it) and names each break's ops.
"""
from __future__ import annotations

import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

# onnxruntime CPU kernels that compute on 8-bit integers (contrib ops included)
INTEGER_KERNELS = frozenset({
    "QLinearConv", "QLinearMatMul", "QGemm", "QLinearAdd", "QLinearMul", "QLinearSigmoid", "QLinearLeakyRelu",
    "QLinearConcat", "QLinearAveragePool", "QLinearGlobalAveragePool", "QLinearSoftmax", "QLinearReduceMean",
    "QLinearWhere", "MatMulInteger", "ConvInteger", "DynamicQuantizeMatMul", "MatMulIntegerToFloat", "QAttention",
    "DynamicQuantizeLinear", "QuantizeLinear"})
# ops that only move or select values: on an integer tensor they stay integer
MOVES = frozenset({"Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten", "Slice", "Split", "Concat", "Gather",
                   "Identity", "MaxPool", "Pad", "Expand", "Tile", "Resize", "DepthToSpace", "SpaceToDepth"})
FLOAT_OUT = frozenset({"DequantizeLinear", "DynamicQuantizeMatMul", "MatMulIntegerToFloat"})  # integer in, float out


@dataclass
class Island:
    """Float ops between int8 kernels: entered from ``entries`` DequantizeLinear, left by ``exits`` Quantize;
    ``broken_by``: the op types that take a DequantizeLinear's output, where the integer chain stopped."""
    ops: dict[str, int]
    broken_by: dict[str, int]
    first: str  # the name of its first node in graph order: where to look
    entries: int
    exits: int


@dataclass
class ChainReport:
    integer_ops: dict[str, int]  # integer kernels that run, by type
    float_ops: dict[str, int]  # float kernels that run, by type (DequantizeLinear included)
    islands: list[Island] = field(default_factory=list)  # float ops between two integer kernels

    @property
    def breaks(self) -> dict[str, int]:
        """Op types that broke a chain (took a DequantizeLinear's output between int8 kernels), with counts."""
        total: Counter = Counter()
        for i in self.islands:
            total.update(i.broken_by)
        return dict(total)

    def describe(self) -> str:
        if not self.islands:
            return "no float island between int8 kernels"
        return (f"{len(self.islands)} float island(s) between int8 kernels, "
                f"{sum(i.entries for i in self.islands)} DequantizeLinear into them and "
                f"{sum(i.exits for i in self.islands)} QuantizeLinear out; broken by "
                + ", ".join(f"{op} ({n})" for op, n in sorted(self.breaks.items(), key=lambda kv: -kv[1])))


def optimized_graph(path: str | Path, level: str = "ORT_ENABLE_ALL"):
    """The ONNX graph an onnxruntime CPU session runs for ``path`` (its optimizer's output)."""
    import onnx
    import onnxruntime as ort

    with tempfile.TemporaryDirectory(prefix="ortopt-") as tmp:
        opts = ort.SessionOptions()
        opts.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level)
        opts.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
        opts.log_severity_level = 3  # its note that an NCHWc graph is machine-specific: we only read it
        ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        return onnx.load(opts.optimized_model_filepath).graph


def int8_chains(graph) -> ChainReport:
    """Which ops of ``graph`` (an ONNX GraphProto, e.g. :func:`optimized_graph`'s) compute in integers, and the
    float islands between integer kernels. A tensor is integer if an integer kernel made it, or a move of an
    integer tensor; an island is a connected set of float nodes fed by a DequantizeLinear and feeding a
    QuantizeLinear (float heads from the graph input and float tails to the output are not islands)."""
    consts = {t.name for t in graph.initializer}
    integer: set[str] = set()
    kinds: dict[int, str] = {}  # node index -> "int" | "float"
    for k, node in enumerate(graph.node):
        data = [i for i in node.input if i and i not in consts]
        if node.op_type in INTEGER_KERNELS - {"QuantizeLinear"} or (
                node.op_type == "QuantizeLinear") or (node.op_type in MOVES and data and data[0] in integer):
            if node.op_type not in FLOAT_OUT:
                integer.update(node.output)
            kinds[k] = "int"
        else:
            kinds[k] = "float"
    for k, node in enumerate(graph.node):
        if node.op_type in FLOAT_OUT:
            kinds[k] = "int" if node.op_type != "DequantizeLinear" else "float"
    producer = {o: k for k, n in enumerate(graph.node) for o in n.output}
    consumers: dict[str, list[int]] = {}
    for k, n in enumerate(graph.node):
        for i in n.input:
            consumers.setdefault(i, []).append(k)
    is_float = {k for k, v in kinds.items() if v == "float" and graph.node[k].op_type != "DequantizeLinear"}
    seen: set[int] = set()
    islands = []
    for start in sorted(is_float):
        if start in seen:
            continue
        group, todo = set(), [start]
        while todo:  # float nodes joined by tensors, either way
            k = todo.pop()
            if k in group:
                continue
            group.add(k)
            node = graph.node[k]
            near = [producer[i] for i in node.input if i in producer] + [c for o in node.output
                                                                        for c in consumers.get(o, [])]
            todo += [j for j in near if j in is_float and j not in group]
        seen |= group
        entries = {producer[i] for k in group for i in graph.node[k].input
                   if i in producer and graph.node[producer[i]].op_type == "DequantizeLinear"}
        exits = {c for k in group for o in graph.node[k].output for c in consumers.get(o, [])
                 if graph.node[c].op_type == "QuantizeLinear"}
        if entries and exits:
            dq_out = {o for e in entries for o in graph.node[e].output}
            broken = Counter(graph.node[k].op_type for k in sorted(group) if dq_out & set(graph.node[k].input))
            islands.append(Island(dict(Counter(graph.node[k].op_type for k in sorted(group))), dict(broken),
                                  graph.node[min(group)].name, len(entries), len(exits)))
    return ChainReport(dict(Counter(n.op_type for k, n in enumerate(graph.node) if kinds[k] == "int")),
                       dict(Counter(n.op_type for k, n in enumerate(graph.node) if kinds[k] == "float")), islands)


def check(path: str | Path) -> ChainReport:
    """:func:`int8_chains` of the graph onnxruntime's CPU session runs for ``path``."""
    return int8_chains(optimized_graph(path))
