"""Core ML exports: the default artifact, options, compression, multi-size, graph checks.

On Linux, validation runs the saved .mlpackage in the reference executor
(``export.coreml_reference``); on macOS, in Core ML itself. A validation that did not run fails
these tests: nothing is "validated" silently.
"""
import json

import coremltools as ct
import pytest

from export.coreml_labels import classifier_labels
from export.graph import inspect_coreml
from mobilevit.labels import imagenet_labels
from tests.export_helpers import exported


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("coreml")


def _validated(res):
    v = res.manifest["validation"]
    assert not v["skipped"], v["skipped"]
    assert v["passed"] and v["by_size"], v
    return v


def test_default_artifact_is_an_xcode_ready_classifier(root):
    res = exported(root, "coreml", "xx_small")["fp16"]
    _validated(res)
    spec = ct.utils.load_spec(str(res.artifact))
    inp = spec.description.input[0]
    assert inp.name == "image" and inp.type.HasField("imageType")
    assert inp.type.imageType.colorSpace == ct.proto.FeatureTypes_pb2.ImageFeatureType.BGR
    assert (inp.type.imageType.width, inp.type.imageType.height) == (256, 256)
    assert spec.description.predictedFeatureName == "classLabel"
    assert classifier_labels(spec) == imagenet_labels()
    meta = spec.description.metadata
    assert "SYNTHETIC" in meta.shortDescription and meta.author and meta.license and meta.versionString
    assert meta.userDefined["variant"] == "xx_small" and meta.userDefined["synthetic"] == "true"
    assert spec.description.input[0].shortDescription
    manifest = json.loads((res.folder / "manifest.json").read_text())
    assert manifest["precision"] == "fp16" and manifest["patch_strategy"] == "pixel_shuffle"


def test_fp32_tensor_input_raw_logits(root):
    res = exported(root, "coreml", "xx_small", ("fp32",), input_kind="tensor", output_kind="logits")["fp32"]
    v = _validated(res)
    assert v["by_size"]["256"]["max_abs_rel"] < 1e-4
    spec = ct.utils.load_spec(str(res.artifact))
    assert spec.description.input[0].name == "input" and spec.description.output[0].name == "logits"


@pytest.mark.parametrize("precision", ["int8", "palettize8"])
def test_compressed_weights(root, precision):
    res = exported(root, "coreml", "xx_small", (precision,))[precision]
    _validated(res)
    ops = inspect_coreml(res.artifact).ops
    assert ops.get("constexpr_affine_dequantize", 0) + ops.get("constexpr_lut_to_dense", 0) > 30


def test_multi_size_model_validates_every_size(root):
    res = exported(root, "coreml", "xx_small", ("fp16",), sizes=(256, 192, 320))["fp16"]
    v = _validated(res)
    assert set(v["by_size"]) == {"192", "256", "320"}
    spec = ct.utils.load_spec(str(res.artifact))
    sizes = {(s.width, s.height) for s in spec.description.input[0].type.imageType.enumeratedSizes.sizes}
    assert sizes == {(192, 192), (256, 256), (320, 320)}


@pytest.mark.parametrize("variant", ["x_small", "small"])
def test_other_variants(root, variant):
    _validated(exported(root, "coreml", variant, ("fp16",))["fp16"])


@pytest.mark.parametrize("variant", ["x_small", "small"])
def test_other_variants_fp32(root, variant):
    _validated(exported(root, "coreml", variant, ("fp32",), output_kind="logits")["fp32"])


def test_static_graph_rank_and_shape_ops(root):
    report = inspect_coreml(exported(root, "coreml", "xx_small")["fp16"].artifact)
    assert report.max_rank <= 4
    assert report.shape_ops == {}
    assert report.transposes <= 15  # pixel_shuffle + split attention: 9 layers + 6 patch permutes
