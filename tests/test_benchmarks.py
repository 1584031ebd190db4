"""Benchmark harness: statistics, drift metrics, JSON schema, markdown, benchmark_model parser, a tiny run."""
import json
from pathlib import Path

import numpy as np
import pytest

from benchmarks.device import adb_devices, parse_benchmark_model, run_on_android
from benchmarks.report import flat_rows, render_markdown, target_status
from benchmarks.stats import gflops, summarize
from export.validate import drift

DATA = Path(__file__).parent / "data"


def test_summary_statistics_on_known_samples():
    s = summarize([1, 2, 3, 4, 5, 6, 7, 8, 9, 10])
    assert s["median_ms"] == 5.5 and s["n"] == 10
    assert s["p25_ms"] == pytest.approx(3.25) and s["p75_ms"] == pytest.approx(7.75)
    assert s["iqr_ms"] == pytest.approx(4.5) and s["p90_ms"] == pytest.approx(9.1)
    assert s["spread_warning"] is True  # IQR is 82% of the median
    quiet = summarize([10.0, 10.1, 10.0, 9.9, 10.05])
    assert quiet["spread_warning"] is False
    with pytest.raises(ValueError):
        summarize([])
    assert gflops(500_000_000, 10.0) == pytest.approx(100.0)


def test_drift_metrics_on_known_inputs():
    ref = np.array([[1.0, 2.0, 3.0, 0.0, -1.0, 0.5], [3.0, 2.0, 1.0, 0.0, -1.0, 0.5]])
    same = drift(ref, ref)
    assert same.cosine_min == pytest.approx(1.0) and same.top1_agreement == 1.0 and same.max_abs == 0.0
    swapped = ref.copy()
    swapped[1, [0, 1]] = swapped[1, [1, 0]]  # second image: top-1 changes, stays in the top-5
    d = drift(ref, swapped)
    assert d.top1_agreement == 0.5 and d.top5_agreement == 1.0
    assert d.max_abs == pytest.approx(1.0) and d.max_abs_rel == pytest.approx(1 / 3)
    assert d.cosine_min < 1.0 and d.mean_abs == pytest.approx(2 / 12)
    far = ref.copy()
    far[0] = [1, 1, -9, 1, 1, 1]  # the reference top-1 (index 2) drops out of the top-5
    assert drift(ref, far).top5_agreement == 0.5


def test_benchmark_model_parser_on_real_output():
    desktop = parse_benchmark_model((DATA / "benchmark_model_mobilenet_v1.txt").read_text())
    assert desktop["timings_us"]["Init"] == 17187
    assert desktop["timings_us"]["First inference"] == 3512391
    assert desktop["timings_us"]["Inference (avg)"] == pytest.approx(2.95034e6)
    assert len(desktop["runs"]) == 1 and desktop["runs"][0]["count"] == 50  # the profiler summary is not a run
    assert desktop["inference_avg_us"] == pytest.approx(2.95034e6)
    assert desktop["memory_mb"] == {"init": 4.21094, "overall": 46.0859}
    phone = parse_benchmark_model((DATA / "benchmark_model_android_yolov5.txt").read_text())
    assert phone["runs"][0] == {"count": 50, "first": 249042, "curr": 250889, "min": 247067, "max": 254474,
                                "avg": 249684, "std": 1442}
    assert phone["timings_us"]["Warmup (avg)"] == 304586 and phone["memory_mb"]["overall"] == 138.809


def test_no_device_is_said_and_skipped(tmp_path, capsys):
    if adb_devices():
        pytest.skip("an Android device is attached")
    assert run_on_android(tmp_path / "m.tflite", tmp_path / "benchmark_model") is None
    assert "no Android device attached" in capsys.readouterr().out


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """xx_small, onnxruntime fp32 (+ torch, + HF baseline), few repeats: writes JSON/CSV/MD/PNG."""
    from benchmarks.__main__ import main

    out = tmp_path_factory.mktemp("bench")
    assert main(["--runtimes", "torch,onnxruntime", "--precisions", "fp32", "--threads", "1,2", "--repeats", "5",
                 "--num-images", "4", "--out", str(out)]) == 0
    return out


def test_tiny_run_writes_every_output(tiny_run):
    for name in ("bench.json", "bench.csv", "bench.md", "bench_xx_small_latency.png",
                 "bench_xx_small_drift_vs_latency.png"):
        assert (tiny_run / name).stat().st_size > 0, name
    assert (tiny_run / "bench_xx_small_latency.png").read_bytes()[:4] == b"\x89PNG"


def test_json_schema_numbers_are_numbers(tiny_run):
    result = json.loads((tiny_run / "bench.json").read_text())
    assert set(result) == {"meta", "variants"} and result["meta"]["threads"] == [1, 2]
    variant = result["variants"][0]
    assert variant["variant"] == "xx_small" and isinstance(variant["macs"], int)
    names = {r["name"] for r in variant["rows"]}
    assert {"pytorch fp32", "onnxruntime fp32", "baseline HF onnxruntime fp32"} <= names
    for row in variant["rows"]:
        for key in ("variant", "name", "runtime", "version", "precision", "source", "patches", "attention"):
            assert isinstance(row[key], str)
        for threads, lat in row["latency"].items():
            assert threads in ("1", "2") and len(lat["samples_ms"]) == 5  # one round of BLOCK = 5
            for key in ("median_ms", "iqr_ms", "p90_ms", "gflops", "fraction_of_peak"):
                assert isinstance(lat[key], float) and lat[key] > 0
        for key in ("max_abs", "cosine_min", "top1_agreement", "top5_agreement"):
            assert isinstance(row["drift"][key], float)
    ours = next(r for r in variant["rows"] if r["name"] == "onnxruntime fp32")
    assert ours["within_tolerance"] is True and ours["drift"]["max_abs_rel"] < 1e-4
    base = next(r for r in variant["rows"] if r["source"] == "hf-baseline")
    assert base["drift"]["cosine_min"] > 0.99999  # the baseline carries the very same weights


def test_csv_has_one_header_and_numeric_columns(tiny_run):
    import csv

    lines = (tiny_run / "bench.csv").read_text().splitlines()
    assert sum(line.startswith("variant,") for line in lines) == 1
    rows = list(csv.DictReader(lines))
    assert len(rows) == 5 * 2  # (3 torch rows, ours, baseline) x two thread counts
    float(rows[0]["median_ms"])
    float(rows[0]["cosine_min"])


def test_markdown_is_rendered_from_the_json(tiny_run):
    result = json.loads((tiny_run / "bench.json").read_text())
    md = render_markdown(result)
    assert md == (tiny_run / "bench.md").read_text()
    assert "| onnxruntime 1.32.0 | fp32 | ours | slice / split |" in md
    assert "onnxruntime fp32 / HF baseline" in md
    status = target_status(result["variants"][0], "2")
    assert status[0]["value"] is not None and status[0]["limit"] == 0.85
    assert len(flat_rows(result)) == 10


def test_readme_blocks_are_filled_from_results(tmp_path):
    from benchmarks.readme import update

    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "bench.md").write_text("| a | b |\n|---|---|\n| 1 | 2 |\n")
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- results:bench -->\nold table\n<!-- /results:bench -->\n"
                      "<!-- results:missing -->\nkept\n<!-- /results:missing -->\n")
    assert update(readme, tmp_path / "results") == ["bench"]
    text = readme.read_text()
    assert "| 1 | 2 |" in text and "old table" not in text and "kept" in text


def test_drift_localisation_names_the_first_bad_stage():
    """With a tolerance nothing can meet, the very first stage is blamed; with a loose one, none is."""
    from benchmarks.localize import localize
    from export.config import Tolerance
    from mobilevit.preprocess import sample_batch
    from mobilevit.synthetic import synthetic_model

    model = synthetic_model("xx_small", patches="slice")
    x = sample_batch(model.cfg, 2).numpy()
    strict = localize(model, "onnx", "fp16", Tolerance(0.0, 1.1, 1.0), x, x)
    assert strict["first_bad_stage"] == 0 and "stage 0" in strict["message"] and len(strict["stages"]) == 1
    loose = localize(model, "onnx", "fp32", Tolerance(1e-3, 0.999, 0.0), x, x)
    assert loose["first_bad_stage"] is None and len(loose["stages"]) == 5 and all(s["ok"] for s in loose["stages"])
