"""TFLite exports through onnx2tf: xx_small in every precision, small in fp32/fp16, x_small fp32."""
import pytest

from export.graph import inspect_tflite
from export.pipeline import ExportRequest, run_export
from export.validate import ValidationError
from tests.export_helpers import exported

PASSING = ("fp32", "fp16", "int8_dynamic")
MAX_TRANSPOSES_XXS = 21  # slice patches + split attention, measured; the HF export as-is has 54


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("tflite")


@pytest.mark.parametrize("precision", PASSING)
def test_xx_small_float_and_dynamic_range(root, precision):
    res = exported(root, "tflite", "xx_small", PASSING)[precision]
    v = res.manifest["validation"]
    assert v["passed"] and v["runtime"].startswith("litert"), v
    assert res.manifest["input"]["layout"] == "NHWC"
    report = inspect_tflite(res.artifact)
    assert report.max_rank <= 4
    assert report.shape_ops == {}
    assert report.transposes <= MAX_TRANSPOSES_XXS


def test_xx_small_full_int8_is_measured_and_refused_on_synthetic_weights(tmp_path):
    """Full int8 (representative dataset of real photos) is converted and run in LiteRT.

    On calibrated synthetic weights it drifts far beyond its tolerance (cosine ~0.4 measured),
    so the exporter must refuse it loudly and write nothing, rather than ship it as validated.
    Its accuracy on trained weights is reported by ``make bench-accuracy``.
    """
    req = ExportRequest(target="tflite", variant="xx_small", precisions=("int8",), out=tmp_path / "out")
    with pytest.raises(ValidationError) as e:
        run_export(req)
    assert "cosine similarity" in str(e.value) and "tflite int8" in str(e.value)
    assert list((tmp_path / "out").iterdir()) == []


def test_small_fp32_fp16(root):
    for res in exported(root, "tflite", "small", ("fp32", "fp16")).values():
        assert res.manifest["validation"]["passed"]


def test_x_small_fp32_fp16(root):
    for res in exported(root, "tflite", "x_small", ("fp32", "fp16")).values():
        assert res.manifest["validation"]["passed"]
