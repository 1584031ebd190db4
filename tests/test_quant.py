"""The int8 sensitivity analysis (benchmarks.quant): its plan, ranking and merging by hand, and one real ONNX run."""
from __future__ import annotations

import json

import pytest

from benchmarks import quant
from mobilevit.layers import KINDS


def _row(name, cosine):
    return {"row": name, "int8_macs_share": 0.1, "drift": {"cosine_mean": cosine, "cosine_min": cosine,
                                                           "max_abs_rel": 0.01, "top1_agreement": 1.0}}


def test_plan_quantizes_each_kind_alone():
    rows = dict(quant.plan("onnx", ("ffn", "stem")))
    assert list(rows) == ["fp32", "all", "ffn", "stem", "recipe"]
    assert rows["fp32"] is None and rows["all"] == ()
    assert "ffn" not in rows["ffn"] and set(rows["ffn"]) == set(KINDS) - {"ffn"}


def test_ranking_is_worst_first_and_ignores_the_fixed_rows():
    result = {"rows": [_row("fp32", 1.0), _row("all", 0.5), _row("qkv", 0.9998), _row("depthwise", 0.98),
                       _row("stem", 0.995), _row("recipe", 0.999)]}
    assert [k for k, _ in quant.ranking(result)] == ["depthwise", "stem", "qkv"]
    assert quant.ranking(result)[0][1] == pytest.approx(0.02)


def test_merge_keeps_other_targets_only_when_the_settings_match():
    base = {"variant": "xx_small", "size": 256, "weights": "w", "threads": 1, "runs": 30, "images": {"v": 1}}
    old = {**base, "targets": {"onnx": {"rows": [1]}, "coreml": {"rows": [2]}}}
    new = {**base, "targets": {"onnx": {"rows": [3]}}}
    assert quant.merge(old, new)["targets"] == {"coreml": {"rows": [2]}, "onnx": {"rows": [3]}}
    assert quant.merge({**old, "runs": 50}, new)["targets"] == {"onnx": {"rows": [3]}}
    assert quant.merge(None, new) is new


@pytest.mark.slow
def test_a_real_onnx_run_writes_the_table(tmp_path):
    """One ONNX sensitivity run over one kind (onnxruntime, real photos): fp32 exact, the kind's row drifts,
    every output is written and the markdown shows the rows."""
    code = quant.main(["--targets", "onnx", "--kinds", "classifier", "--runs", "5", "--num-images", "8",
                       "--out", str(tmp_path)])
    assert code == 0
    result = json.loads((tmp_path / "quant.json").read_text())
    rows = {r["row"]: r for r in result["targets"]["onnx"]["rows"]}
    assert list(rows) == ["fp32", "all", "classifier", "recipe"]
    assert rows["fp32"]["drift"]["max_abs_rel"] < 1e-4
    assert 0 < 1 - rows["classifier"]["drift"]["cosine_mean"] < 1 - rows["all"]["drift"]["cosine_mean"]
    assert rows["classifier"]["int8_macs_share"] == pytest.approx(result["macs_share"]["classifier"])
    assert rows["recipe"]["speedup"]["ci95_low"] <= rows["recipe"]["speedup"]["value"]
    md = (tmp_path / "quant.md").read_text()
    assert "### onnx int8" in md and "| classifier |" in md and "**recipe**" in md
    assert (tmp_path / "quant.png").read_bytes()[:4] == b"\x89PNG"


def test_bad_arguments_exit_2(capsys):
    assert quant.main(["--targets", "tensorrt"]) == 2
    assert "choose from coreml, executorch, onnx, tflite" in capsys.readouterr().err
    assert quant.main(["--kinds", "conv3x3"]) == 2
    assert "unknown layer kind" in capsys.readouterr().err
