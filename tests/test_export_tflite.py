"""TFLite exports through onnx2tf: xx_small in every precision, small in fp32/fp16, x_small fp32."""
import pytest

from export.graph import inspect_tflite
from tests.export_helpers import exported

PASSING = ("fp32", "fp16", "int8_dynamic", "int8")
MAX_TRANSPOSES_XXS = 21  # slice patches + split attention, measured; the HF export as-is has 54


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("tflite")


@pytest.mark.parametrize("precision", PASSING)
def test_xx_small_every_precision_validates(root, precision):
    res = exported(root, "tflite", "xx_small", PASSING)[precision]
    v = res.manifest["validation"]
    assert v["passed"] and v["runtime"].startswith("litert"), v
    assert res.manifest["input"]["layout"] == "NHWC"
    report = inspect_tflite(res.artifact)
    assert report.max_rank <= 4
    assert report.shape_ops == {}
    assert report.transposes <= MAX_TRANSPOSES_XXS


def test_int8_recipe_kinds_are_int8_and_the_rest_float(root):
    """In the published full-int8 model, the recipe's int8 kinds run int8 kernels and everything else is float,
    with float input/output; expected counts from xx_small's architecture (tests.export_helpers)."""
    from collections import Counter

    import numpy as np
    from ai_edge_litert.interpreter import Interpreter

    from export import tflite as T
    from export.config import int8_recipe
    from tests.export_helpers import XXS_HEADS, XXS_LAYER_COUNTS

    res = exported(root, "tflite", "xx_small", PASSING)["int8"]
    recipe = int8_recipe("tflite", "int8")
    assert res.manifest["int8_recipe"]["float_kinds"] == list(recipe.float_kinds)
    interp = Interpreter(model_path=str(res.artifact), num_threads=1)
    interp.allocate_tensors()
    io = interp.get_input_details() + interp.get_output_details()
    assert [d["dtype"] for d in io] == [np.float32, np.float32]
    int8_outputs = {d["name"] for d in interp.get_tensor_details() if d["dtype"] == np.int8}
    ops = Counter((op.op, op.output in int8_outputs) for op in T.graph_ops(res.artifact.read_bytes()))
    int8_linears = sum(XXS_LAYER_COUNTS[k] for k in ("qkv", "attn_out", "ffn", "classifier")
                       if k not in recipe.float_kinds)
    assert ops[("FULLY_CONNECTED", True)] == int8_linears > 0
    assert ops[("BATCH_MATMUL", True)] == (0 if "attn_matmul" in recipe.float_kinds
                                          else 2 * XXS_HEADS * XXS_LAYER_COUNTS["attn_matmul"])
    assert ops[("SOFTMAX", True)] == 0 and ops[("MEAN", True)] == 0  # "*": no op outside a layer is int8


def test_small_fp32_fp16(root):
    for res in exported(root, "tflite", "small", ("fp32", "fp16")).values():
        assert res.manifest["validation"]["passed"]


def test_x_small_fp32_fp16(root):
    for res in exported(root, "tflite", "x_small", ("fp32", "fp16")).values():
        assert res.manifest["validation"]["passed"]
