"""Accuracy drift on a real labelled dataset: every target x precision is measured, int8 included."""
import json

import pytest

from benchmarks.accuracy import MATRIX, render, run
from mobilevit.train import TrainConfig, train


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    work = tmp_path_factory.mktemp("acc")
    cfg = TrainConfig(variant="xx_small", epochs=1, sizes=(64,), base_batch=32, lr=3e-3, warmup_epochs=0.3,
                      out=str(work / "ft"), limit=500)
    train(cfg, progress=False)
    return run(work / "ft" / "model.pt", work / "out", train_if_missing=False, limit=96), work / "out"


def test_every_target_and_precision_has_a_row(report):
    result, _ = report
    got = [(r["target"], r["precision"]) for r in result["rows"]]
    assert got[0] == ("pytorch", "fp32")
    assert sorted(got[1:]) == sorted((t, p) for t, ps in MATRIX.items() for p in ps)
    assert result["meta"]["images"] == 96 and result["meta"]["dataset"] == "digits"


def test_accuracy_is_reported_even_when_it_drops(report):
    result, _ = report
    torch_top1 = result["rows"][0]["top1"]
    assert torch_top1 > 0.3  # a real, if short, fine-tune: chance is 10%
    for r in result["rows"][1:]:
        assert r["error"] == "", r
        assert 0.0 <= r["top1"] <= 1.0 and r["changed"] >= 0 and r["images"] == 96
        assert r["delta_top1"] == pytest.approx(r["top1"] - torch_top1)
        assert r["right_to_wrong"] - r["wrong_to_right"] == round(-r["delta_top1"] * 96)
        if r["precision"] == "fp32":
            assert r["changed"] <= 1  # fp32 artifacts compute what PyTorch computes
    int8 = [r for r in result["rows"] if r["precision"] in ("int8", "int8_dynamic", "w8a8")]
    assert len(int8) == 7 and all(r["top1"] is not None for r in int8)  # 2 ONNX, 2 TFLite, 2 Core ML, 1 ExecuTorch


def test_outputs_are_written(report):
    result, out = report
    assert json.loads((out / "accuracy.json").read_text()) == result
    assert (out / "accuracy.md").read_text() == render(result)
    assert (out / "accuracy.png").read_bytes()[:4] == b"\x89PNG"
    assert (out / "accuracy.csv").read_text().count("\n") == len(result["rows"]) + 1
