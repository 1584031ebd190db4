"""The same request on the same machine gives byte-identical artifacts, for Core ML, ONNX and TFLite.

The first export of each comes from the session's shared exports (tests.export_helpers); the second is
made here, into another folder, through the same pipeline.
"""
import pytest

from export.pipeline import ExportRequest, run_export
from export.publish import sha256_path
from tests.export_helpers import TFLITE_ALL, exported


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("repro")


@pytest.mark.parametrize("target,precisions,precision", [
    ("coreml", (), "fp16"),  # the default Core ML export: its Manifest.json used to get random ids
    ("onnx", ("fp32", "fp16", "int8", "int8_dynamic"), "fp32"),  # ONNX's fp32 file is the same in any request
    # TFLite's fp32 file too: onnx2tf builds one Keras model, converted only to what is asked for
    ("tflite", TFLITE_ALL, "fp32"),
])
def test_a_second_export_is_byte_identical(root, tmp_path, target, precisions, precision):
    first = exported(root, target, "xx_small", precisions)[precision]
    again = run_export(ExportRequest(target=target, variant="xx_small", precisions=(precision,), out=tmp_path))[0]
    files = sorted(p.relative_to(first.artifact) for p in first.artifact.rglob("*")) if first.artifact.is_dir() else []
    assert files == (sorted(p.relative_to(again.artifact) for p in again.artifact.rglob("*")) if files else [])
    assert sha256_path(first.artifact) == sha256_path(again.artifact)
    assert first.manifest["artifact_sha256"] == again.manifest["artifact_sha256"]
