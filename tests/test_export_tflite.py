"""TFLite exports through onnx2tf: xx_small in every precision, small in fp32/fp16, x_small fp32."""
import pytest

from export.graph import inspect_tflite
from tests.export_helpers import exported

ALL = ("fp32", "fp16", "int8_dynamic", "int8")
MAX_TRANSPOSES_XXS = 48  # slice strategy, measured; the HF export as-is has 54


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("tflite")


@pytest.mark.parametrize("precision", ALL)
def test_xx_small_every_precision(root, precision):
    res = exported(root, "tflite", "xx_small", ALL)[precision]
    v = res.manifest["validation"]
    assert v["passed"] and v["runtime"].startswith("litert"), v
    assert res.manifest["input"]["layout"] == "NHWC"
    report = inspect_tflite(res.artifact)
    assert report.max_rank <= 4
    assert report.shape_ops == {}
    assert report.transposes <= MAX_TRANSPOSES_XXS


def test_small_fp32_fp16(root):
    for res in exported(root, "tflite", "small", ("fp32", "fp16")).values():
        assert res.manifest["validation"]["passed"]


def test_x_small_fp32(root):
    assert exported(root, "tflite", "x_small", ("fp32",))["fp32"].manifest["validation"]["passed"]
