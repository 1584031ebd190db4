"""TFLite drift localisation on a real onnx2tf artifact: the session's xx_small fp32 export."""
import pytest

from tests.export_helpers import TFLITE_ALL, exported

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tflite_fp32(tmp_path_factory):
    """The session's published xx_small TFLite fp32 (tests.export_helpers, made with every precision;
    test_reproducible compares an fp32-only export with it), the model it was converted from and three
    photos to localise drift on."""
    from data.photos import sample_batch
    from data.synthetic import synthetic_model
    from export import with_target_defaults

    # the pipeline's model (export.request.load_model): the same synthetic weights, the target's patches/attention
    model = with_target_defaults(synthetic_model("xx_small"), "tflite")
    x = sample_batch(model.cfg, 3).numpy()
    path = exported(tmp_path_factory.mktemp("tfl"), "tflite", "xx_small", TFLITE_ALL)["fp32"].artifact
    return model, path, x


def test_every_checkpoint_is_found_and_matches_pytorch_in_fp32(tflite_fp32):
    """A wrong match would show as a large drift: fp32 must agree to ~1e-6 at all 11 checkpoints."""
    from benchmarks.localize import localize_in_artifact
    from export.config import TARGETS, TOLERANCES, hook

    model, path, x = tflite_fp32
    runner = hook(TARGETS["tflite"], "intermediates")(path)  # the target's own intermediates runner
    res = localize_in_artifact(model, runner, TOLERANCES[("tflite", "fp32")], x)
    assert res["unmatched"] == [] and len(res["points"]) == 2 + 3 * 3  # 2 MV2 stages, 3 MobileViT stages
    assert all(p["ok"] and p["max_abs_rel"] < 1e-4 and p["cosine_min"] > 0.99999 for p in res["points"])
    assert res["first_bad_stage"] is None and "head" in res["message"]
    assert res["builtin_kernels_logits"]["top1_agreement"] == 1.0


def test_a_tolerance_nothing_meets_blames_the_first_checkpoint(tflite_fp32):
    from benchmarks.localize import localize_in_artifact
    from export.config import TARGETS, Tolerance, hook

    model, path, x = tflite_fp32
    res = localize_in_artifact(model, hook(TARGETS["tflite"], "intermediates")(path), Tolerance(0.0, 1.1, 1.0), x)
    assert res["first_bad_stage"] == 0 and res["first_bad_point"] == "stage 0 output"
    assert res["message"] == "drift appears at stage 0 output (stride 2)"
