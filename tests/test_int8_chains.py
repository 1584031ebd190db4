"""The integer-chain check on the graph onnxruntime runs: a planted float island is found and named."""
from __future__ import annotations

import numpy as np
import pytest

from export.targets.onnx.chains import int8_chains, optimized_graph


def _qdq_convs(path, middle: str | None):
    """image -> Q/DQ -> int8 conv -> Q/DQ -> [middle, a float op] -> Q/DQ -> int8 conv -> Q/DQ -> output.
    Weights int8 per tensor, activations uint8; every scale 1/32 (zero point 128)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits, nodes = [], []

    def const(name, value):
        inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    s, z = const("s", np.float32(1 / 32)), const("z", np.uint8(128))
    ws, wz = const("ws", np.float32(1 / 64)), const("wz", np.int8(0))

    def qdq(x, tag):
        nodes.append(helper.make_node("QuantizeLinear", [x, s, z], [f"{tag}_q"]))
        nodes.append(helper.make_node("DequantizeLinear", [f"{tag}_q", s, z], [f"{tag}_dq"]))
        return f"{tag}_dq"

    def conv(x, tag):
        w = const(f"{tag}_w", rng.integers(-60, 60, (4, 4, 3, 3), dtype=np.int8))
        nodes.append(helper.make_node("DequantizeLinear", [w, ws, wz], [f"{tag}_wdq"]))
        nodes.append(helper.make_node("Conv", [x, f"{tag}_wdq"], [f"{tag}_out"], pads=[1, 1, 1, 1], name=tag))
        return f"{tag}_out"

    x = qdq(conv(qdq("image", "in"), "conv1"), "a")
    if middle:
        nodes.append(helper.make_node(middle, [x], ["planted"], name="planted"))
        x = "planted"
    x = qdq(conv(qdq(x, "b"), "conv2"), "c")
    nodes.append(helper.make_node("Identity", [x], ["out"]))
    graph = helper.make_graph(nodes, "qdq", [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 4, 8, 8])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 4, 8, 8])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(path))
    return path


@pytest.mark.parametrize("middle", ["Sin", "Erf"])
def test_a_planted_float_op_between_int8_convs_is_one_island_named_by_it(tmp_path, middle):
    report = int8_chains(optimized_graph(_qdq_convs(tmp_path / "m.onnx", middle)))
    assert report.integer_ops.get("QLinearConv") == 2, report  # both convs fused into integer kernels
    assert len(report.islands) == 1, report
    island = report.islands[0]
    assert island.ops == island.broken_by == {middle: 1} and island.first == "planted"
    assert (island.entries, island.exits) == (1, 1)
    assert report.breaks == {middle: 1} and middle in report.describe()


def test_without_the_planted_op_the_chain_is_whole(tmp_path):
    report = int8_chains(optimized_graph(_qdq_convs(tmp_path / "m.onnx", None)))
    assert report.integer_ops.get("QLinearConv") == 2, report
    assert report.islands == [] and report.describe() == "no float island between int8 kernels"
