"""Accuracy drift on a real labelled dataset: every target x precision is measured, int8 included."""
import csv
import json
import re
from pathlib import Path

import pytest

from benchmarks.accuracy import MATRIX, run


@pytest.fixture(scope="module")
def report(tmp_path_factory, fine_tuned):
    """The demo on the session's fine-tuned digits checkpoint (tests/conftest.py, shared with test_train)."""
    _, summary = fine_tuned
    out = tmp_path_factory.mktemp("acc") / "out"
    return run(Path(summary["checkpoint"]), out, train_if_missing=False, limit=96), out


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
    """The files say what the JSON says, read back by parsers written here, not by the writer's own render."""
    result, out = report
    assert json.loads((out / "accuracy.json").read_text()) == result
    assert (out / "accuracy.png").read_bytes()[:4] == b"\x89PNG"
    _tables_agree_with(result, out)


def _tables_agree_with(result, out):
    """accuracy.md and accuracy.csv hold one row per artifact with the JSON's numbers."""
    rows = result["rows"]
    md = (out / "accuracy.md").read_text().splitlines()
    sep = md.index("|---|---|---|---|---|---|---|---|---|")
    table = [[c.strip() for c in line.strip().strip("|").split("|")] for line in md[sep + 1:] if line.startswith("|")]
    assert len(table) == len(rows) == 17  # PyTorch + 16 artifacts
    for cells, r in zip(table, rows):
        assert cells[0] == f"{r['target']} {r['precision']}"
        shown = float(re.match(r"([0-9.]+)% \[", cells[2]).group(1))  # "87.50% [80.21%, 93.75%]"
        assert shown == pytest.approx(100 * r["top1"], abs=0.005)

    with open(out / "accuracy.csv", newline="") as f:
        reader = csv.DictReader(f)
        got = list(reader)
    assert reader.fieldnames == [
        "target", "precision", "artifact", "runtime", "images", "top1", "top1_ci95_low", "top1_ci95_high", "top5",
        "delta_top1", "delta_top1_ci95_low", "delta_top1_ci95_high", "delta_top5", "agreement_top1", "changed",
        "right_to_wrong", "wrong_to_right", "classes_lost", "error"]
    assert len(got) == len(rows)
    for c, r in zip(got, rows):
        assert (c["target"], c["precision"], int(c["images"])) == (r["target"], r["precision"], 96)
        assert float(c["top1"]) == r["top1"] and float(c["top1_ci95_low"]) == r["top1_ci95"][0]
        assert int(c["right_to_wrong"]) == r["right_to_wrong"]

