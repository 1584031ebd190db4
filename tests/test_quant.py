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


ONNX_RUN = ["--targets", "onnx", "--kinds", "classifier", "--runs", "5", "--num-images", "8"]


@pytest.fixture(scope="module")
def onnx_run(tmp_path_factory):
    """One ONNX sensitivity run over one kind, in this process."""
    out = tmp_path_factory.mktemp("quant-local")
    assert quant.main(ONNX_RUN + ["--out", str(out)]) == 0
    return out


@pytest.mark.slow
def test_a_real_onnx_run_writes_the_table(onnx_run):
    """One ONNX sensitivity run over one kind (onnxruntime, real photos): fp32 exact, the kind's row drifts,
    every output is written and the markdown shows the rows."""
    result = json.loads((onnx_run / "quant.json").read_text())
    rows = {r["row"]: r for r in result["targets"]["onnx"]["rows"]}
    assert list(rows) == ["fp32", "all", "classifier", "recipe"]
    assert rows["fp32"]["drift"]["max_abs_rel"] < 1e-4
    assert 0 < 1 - rows["classifier"]["drift"]["cosine_mean"] < 1 - rows["all"]["drift"]["cosine_mean"]
    assert rows["classifier"]["int8_macs_share"] == pytest.approx(result["macs_share"]["classifier"])
    assert rows["recipe"]["speedup"]["ci95_low"] <= rows["recipe"]["speedup"]["value"]
    md = (onnx_run / "quant.md").read_text()
    assert "### onnx int8" in md and "| classifier |" in md and "**recipe**" in md
    assert (onnx_run / "quant.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow
def test_a_ray_run_converts_on_workers_and_measures_the_same_drift(onnx_run, tmp_path):
    """The same run with `--ray` (a real cluster on this machine, loopback): one Ray task per row converts and
    measures drift; the figures equal the one-process run's row by row, to 1e-6 (a worker's PyTorch reference
    runs at 1 thread, this process's at 2: its logits differ in the 7th digit, measured 5e-8), and the artifacts
    come back for the timing."""
    assert quant.main(ONNX_RUN + ["--out", str(tmp_path), "--ray", "--workers", "2"]) == 0
    local, ray = (json.loads((d / "quant.json").read_text())["targets"]["onnx"]["rows"] for d in (onnx_run, tmp_path))
    assert [r["row"] for r in ray] == ["fp32", "all", "classifier", "recipe"]
    for a, b in zip(local, ray):
        figures = {k: v for k, v in a["drift"].items() if isinstance(v, (int, float))}
        assert figures and {k: b["drift"][k] for k in figures} == pytest.approx(figures, abs=1e-6), a["row"]
        assert b["int8_macs_share"] == a["int8_macs_share"] and b["artifact_bytes"] == a["artifact_bytes"]
        assert b["latency"]["median_ms"] > 0


def test_bad_arguments_exit_2(capsys):
    assert quant.main(["--targets", "tensorrt"]) == 2
    assert "choose from coreml, executorch, onnx, tflite" in capsys.readouterr().err
    assert quant.main(["--kinds", "conv3x3"]) == 2
    assert "unknown layer kind" in capsys.readouterr().err
