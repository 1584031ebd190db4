"""ONNX exports: every precision of xx_small, other variants once, graph checks, dynamic H/W."""
import json

import numpy as np
import pytest

from export.graph import inspect_onnx
from export.onnx import export_onnx
from export.runners import OnnxRuntimeRunner
from mobilevit import STRATEGIES, build
from tests.export_helpers import exported

# Transposes per static xx_small export (batched attention), measured when each strategy was
# added: must not grow. The exporters' default (slice + split attention) has 15.
MAX_TRANSPOSES = {"reference": 48, "pixel_shuffle": 45, "conv": 42, "slice": 42}
MAX_TRANSPOSES_DEFAULT = 15


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("onnx")


@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8", "int8_dynamic"])
def test_xx_small_every_precision_validates(root, precision):
    res = exported(root, "onnx", "xx_small", ("fp32", "fp16", "int8", "int8_dynamic"))[precision]
    manifest = json.loads((res.folder / "manifest.json").read_text())
    assert manifest["validation"]["passed"] and manifest["validation"]["by_size"]["256"]["images"] == 16
    assert manifest["validation"]["runtime"].startswith("onnxruntime")
    assert manifest["weights"]["synthetic"] is True
    assert manifest["graph"]["max_rank"] <= 4
    assert res.artifact.exists() and (res.folder / "labels.txt").exists()
    assert not list(res.folder.parent.glob(".partial-*"))


@pytest.mark.parametrize("variant", ["x_small", "small"])
def test_other_variants_fp32_and_fp16(root, variant):
    res = exported(root, "onnx", variant, ("fp32", "fp16"))
    for r in res.values():
        assert r.manifest["validation"]["passed"]


# Known, measured exceptions to "no tensor above rank 4" (and why the strategy is not the default).
RANK_EXCEPTIONS = {
    "pixel_shuffle": "torch lowers pixel_unshuffle to a rank-6 Reshape/Transpose (ONNX SpaceToDepth "
                     "uses the other, DCR, channel order)",
}


@pytest.mark.parametrize("strategy", list(STRATEGIES))
def test_static_graph_has_no_shape_ops_and_rank_at_most_4(tmp_path, strategy):
    model = build("xx_small", patches=strategy)
    path = export_onnx(model, tmp_path / "m.onnx", dynamic_batch=False)
    report = inspect_onnx(path)
    if strategy in RANK_EXCEPTIONS:
        assert report.max_rank == 6, "exception no longer needed: " + RANK_EXCEPTIONS[strategy]
    else:
        assert report.max_rank <= 4
    assert report.shape_ops == {}, report.shape_ops
    assert report.transposes <= MAX_TRANSPOSES[strategy], report.transposes
    print(f"{strategy}: {report.nodes} nodes, {report.transposes} transposes")


def test_default_export_graph(root):
    """The published default (slice patches, split attention): dynamic batch, no shape ops, rank 4."""
    res = exported(root, "onnx", "xx_small", ("fp32", "fp16", "int8", "int8_dynamic"))["fp32"]
    report = inspect_onnx(res.artifact)
    assert res.manifest["attention_layout"] == "split" and res.manifest["patch_strategy"] == "slice"
    assert report.shape_ops == {} and report.max_rank <= 4
    assert report.transposes <= MAX_TRANSPOSES_DEFAULT


def test_dynamic_hw_validates_at_several_sizes(root):
    res = exported(root, "onnx", "xx_small", ("fp32",), dynamic_hw=True)["fp32"]
    sizes = res.manifest["validation"]["by_size"]
    assert set(sizes) >= {"128", "192", "256", "320", "384"}
    assert all(d["max_abs_rel"] < 1e-4 for d in sizes.values())


def test_batch_of_four_matches_one_by_one(root):
    res = exported(root, "onnx", "xx_small", ("fp32", "fp16", "int8", "int8_dynamic"))["fp32"]
    runner = OnnxRuntimeRunner(res.artifact)
    x = np.random.default_rng(0).random((4, 3, 256, 256), dtype=np.float32)
    together = runner(x)
    apart = np.concatenate([runner(x[i:i + 1]) for i in range(4)])
    np.testing.assert_allclose(together, apart, rtol=1e-4, atol=1e-5)
