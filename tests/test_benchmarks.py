"""Benchmark harness: statistics, drift metrics, JSON schema, markdown, benchmark_model parser, a tiny run."""
import json
from pathlib import Path

import numpy as np
import pytest

from benchmarks.device import adb_devices, android_status, parse_benchmark_model, run_on_android
from benchmarks.report import target_status
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


def test_the_pytorch_reference_runs_once_per_batch_of_photos():
    """Every precision of an export is validated on the same photos: PyTorch runs once per distinct batch (equal
    values, not the same object), a batch changed in place runs again, and a caller cannot spoil the kept answer."""
    import torch

    from export.validate import torch_reference

    calls = []

    class Doubler(torch.nn.Module):
        def forward(self, x):
            calls.append(x.shape)
            return 2 * x.flatten(1)

    ref = torch_reference(Doubler())
    x = np.arange(12, dtype=np.float32).reshape(2, 3, 2, 1)  # [2, 3, 2, 1]
    y = ref(x)
    np.testing.assert_array_equal(y, 2 * x.reshape(2, 6))
    y[:] = -1  # the caller's copy
    np.testing.assert_array_equal(ref(x.copy()), 2 * x.reshape(2, 6))
    assert len(calls) == 1
    x[0, 0, 0, 0] = 100.0
    assert ref(x)[0, 0] == 200.0 and len(calls) == 2
    assert ref(x[:1]).shape == (1, 6) and len(calls) == 3  # another batch
    probs = torch_reference(Doubler(), softmax=True)(x)
    np.testing.assert_allclose(probs.sum(1), 1.0, rtol=1e-6)


def test_probabilities_are_judged_in_probability_units():
    """A classifier's output is judged on what it is: 200 near-uniform probabilities of 0.005 (synthetic
    weights), two of them moved by 0.00168, is a 0.00168 change of probability, not "0.34 of the range"."""
    from export.config import Tolerance
    from export.validate import failures

    ref = np.full((1, 200), 0.005)
    out = ref.copy()
    out[0, :2] = [0.00668, 0.00332]  # still sums to 1
    d = drift(ref, out, probabilities=True)
    assert d.output == "probabilities" and d.max_abs == pytest.approx(0.00168)
    assert d.max_abs_rel == pytest.approx(0.00168)
    # by hand: ref . out = 0.005; |ref| = 0.005 * sqrt(200); |out| = sqrt(198 * 0.005^2 + 0.00668^2 + 0.00332^2)
    assert d.cosine_min == pytest.approx(0.005 / (0.005 * 200 ** 0.5 * 0.0050056448 ** 0.5), rel=1e-9)
    assert failures(d, Tolerance(0.06, 0.998, 0.9), "256x256") == []
    assert failures(d, Tolerance(0.001, 0.998, 0.9), "256x256") == [
        "256x256: a class probability moved by 0.00168 (limit 0.001)"]
    as_logits = drift(ref, out)
    assert as_logits.max_abs_rel == pytest.approx(0.00168 / 0.005)
    assert failures(as_logits, Tolerance(0.06, 0.998, 0.9), "256x256") == [
        "256x256: max abs diff 0.00168 is 0.336 of the logit range (limit 0.06)"]


def test_benchmark_model_parser_on_real_output():
    desktop = parse_benchmark_model((DATA / "benchmark_model_mobilenet_v1.txt").read_text())
    assert desktop["timings_us"]["Init"] == 17187
    assert desktop["timings_us"]["First inference"] == 3512391
    assert desktop["timings_us"]["Inference (avg)"] == pytest.approx(2.95034e6)
    assert len(desktop["runs"]) == 1 and desktop["runs"][0]["count"] == 50  # not the profiler's summary
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
    status = android_status(tmp_path / "benchmark_model")
    assert status["available"] is False and status["reason"].startswith("skipped: ")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """xx_small, onnxruntime fp32 (+ torch, + HF baselines), few repeats: writes JSON/CSV/MD/PNG."""
    from benchmarks.__main__ import main

    out = tmp_path_factory.mktemp("bench")
    assert main(["--targets", "pytorch,onnx", "--precisions", "fp32", "--threads", "1,2",
                 "--repeats", "10", "--num-images", "4", "--out", str(out)]) == 0
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
    assert {"pytorch fp32", "onnxruntime fp32", "baseline hf-as-is onnxruntime fp32",
            "baseline hf-our-exporter onnxruntime fp32"} <= names
    for row in variant["rows"]:
        for key in ("variant", "name", "runtime", "version", "precision", "source", "patches", "attention"):
            assert isinstance(row[key], str)
        for threads, lat in row["latency"].items():
            assert threads in ("1", "2") and len(lat["samples_ms"]) == 10  # two rounds of BLOCK = 5
            for key in ("median_ms", "iqr_ms", "p90_ms", "gflops", "ci95_low_ms", "ci95_high_ms"):
                assert isinstance(lat[key], float) and lat[key] > 0
            assert lat["ci95_low_ms"] <= lat["median_ms"] <= lat["ci95_high_ms"]
            if row["precision"] in ("fp32", "fp32-cl"):  # fraction of the fp32 peak, flagged if above it
                assert lat["peak_kind"] == "fp32" and lat["over_peak"] == (lat["fraction_of_peak"] > 1.0)
            else:  # bf16: no peak of its kind was measured, so no fraction at all
                assert lat["peak_kind"] is None and lat["fraction_of_peak"] is None
        for key in ("max_abs", "cosine_min", "top1_agreement", "top5_agreement"):
            assert isinstance(row["drift"][key], float)
    ours = next(r for r in variant["rows"] if r["name"] == "onnxruntime fp32")
    assert ours["within_tolerance"] is True and ours["drift"]["max_abs_rel"] < 1e-4
    for t in ("1", "2"):
        settings = ours["latency"][t]["settings"]
        assert settings["intra_op.allow_spinning"] == 0 and settings["threads"] == int(t)
    for base in (r for r in variant["rows"] if r["source"] != "ours"):
        assert base["drift"]["cosine_min"] > 0.99999  # the baselines carry the very same weights
    meta = result["meta"]
    assert meta["noisy_threads"] == {"1": False, "2": (meta["machine"]["logical_cores"] or 1) <= 4}
    assert meta["headline_threads"] == 1 and meta["command"].startswith("python -m benchmarks --targets")
    orders = variant["round_orders"]["1"]
    assert len(orders) == 2 and all(sorted(o) == sorted(names) for o in orders)  # every row, once a round
    peaks = variant["peaks"]
    for when in ("start", "end"):
        assert set(peaks[when]["fp32_gflops"]) == {"1", "2"} and peaks[when]["int8_gops"]["1"] > 0
    for t in ("1", "2"):
        for target in variant["targets"][t]:
            assert target["status"] in ("met", "not met", "undecided", "not measured"), target
            if target["value"] is not None:
                assert target["ci95_low"] <= target["value"] <= target["ci95_high"]


def test_csv_has_one_header_and_numeric_columns(tiny_run):
    """Every (row, threads) pair is a CSV row whose numbers are the JSON's, in a consistent order."""
    import csv

    lines = (tiny_run / "bench.csv").read_text().splitlines()
    assert sum(line.startswith("cpu,logical_cores,variant,") for line in lines) == 1
    rows = list(csv.DictReader(lines))
    assert len(rows) == 6 * 2  # (3 torch rows, ours, 2 baselines) x two thread counts
    result = json.loads((tiny_run / "bench.json").read_text())
    by_name = {r["name"]: r for r in result["variants"][0]["rows"]}
    assert {(r["name"], r["threads"]) for r in rows} == {(n, t) for n in by_name for t in ("1", "2")}
    for r in rows:
        lat, d = by_name[r["name"]]["latency"][r["threads"]], by_name[r["name"]]["drift"]
        hand = np.median(lat["samples_ms"])  # the JSON keeps samples to 4 decimals
        assert float(r["median_ms"]) == lat["median_ms"] == pytest.approx(hand, abs=1e-4)
        assert float(r["ci95_low_ms"]) <= float(r["median_ms"]) <= float(r["ci95_high_ms"])
        assert 0 < float(r["p25_ms"]) <= float(r["median_ms"]) <= float(r["p75_ms"])
        assert float(r["cosine_min"]) == d["cosine_min"] and float(r["max_abs"]) == d["max_abs"]
        assert int(r["logical_cores"]) == result["meta"]["machine"]["logical_cores"] >= 1
    assert rows[0]["cpu"] and rows[0]["threads"] == "1"


def test_markdown_and_targets_written_from_the_run(tiny_run):
    """bench.md shows the rows measured; the targets are the four fp32 ratios, judged on this run's samples."""
    result = json.loads((tiny_run / "bench.json").read_text())
    md = (tiny_run / "bench.md").read_text()
    assert "| onnxruntime 1.32.0 | fp32 | ours | slice / split |" in md
    assert "- onnxruntime fp32 / HF as-is: " in md and "(the rewrites alone)" in md
    assert "ms @2 thr (noisy) [95% CI]" in md or not result["meta"]["noisy_threads"]["2"]
    assert "| onnx | fp32 | 0.0001 | 0.99999 | 100% |" in md  # the tolerance table of the rows measured
    assert "channels-last" in md and "bf16 autocast" in md  # does either help PyTorch eager?
    assert "Android (TFLite `benchmark_model` over adb): skipped" in md and "Performance" in md
    variant = result["variants"][0]
    status = variant["targets"]["2"]
    assert [(t["target"], t["op"], t["limit"], t["status"] == "not measured") for t in status] == [
        ("onnxruntime fp32 / HF as-is", "<=", 0.85, False),
        ("onnxruntime fp32 / HF through our exporter (the rewrites alone)", "<=", 1.0, False),
        ("TFLite fp32 / HF as-is", "<=", 0.7, True),  # no TFLite row in this run
        ("ExecuTorch fp32 / HF as-is (one XNNPACK delegate vs the public graph's many)", "<=", 1.0, True)]
    samples = {r["name"]: r["latency"]["2"]["samples_ms"] for r in variant["rows"]}
    ours = np.median(samples["onnxruntime fp32"])
    as_is, via_ours = (np.median(samples[f"baseline {s} onnxruntime fp32"]) for s in ("hf-as-is", "hf-our-exporter"))
    assert status[0]["value"] == pytest.approx(ours / as_is, rel=1e-4)  # a ratio of medians
    assert status[1]["value"] == pytest.approx(ours / via_ours, rel=1e-4)
    for t in (status[0], status[1]):
        assert t["ci95_low"] <= t["value"] <= t["ci95_high"]
        want = "met" if t["ci95_high"] <= t["limit"] else "not met" if t["ci95_low"] > t["limit"] else "undecided"
        assert t["status"] == want, t


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
    from data.photos import sample_batch
    from data.synthetic import synthetic_model
    from export.config import Tolerance

    model = synthetic_model("xx_small", patches="slice")
    x = sample_batch(model.cfg, 2).numpy()
    strict = localize(model, "onnx", "fp16", Tolerance(0.0, 1.1, 1.0), x, x)
    assert strict["first_bad_stage"] == 0 and "stage 0" in strict["message"] and len(strict["points"]) == 1
    loose = localize(model, "onnx", "fp32", Tolerance(1e-3, 0.999, 1.0), x, x)  # no top-1 on features
    assert loose["first_bad_stage"] is None and len(loose["points"]) == 5
    assert all(p["ok"] for p in loose["points"]) and "head" in loose["message"]


def test_tflite_checkpoints_are_matched_by_structure_not_by_name():
    """A stage whose strided inverted residual shares its shape with five other tensors (as in xx_small)."""
    from benchmarks.localize import _Point, match_points

    s0, s2, cat, tok = (1, 64, 64, 24), (1, 32, 32, 48), (1, 32, 32, 96), (4, 256, 64)
    shapes = {0: s0, 1: s0, 2: s2, 3: s2, 4: s2, 5: s2, 6: tok, 7: tok, 8: s2, 9: cat, 10: s2,
              11: (1, 16, 16, 64)}
    ops = [{"op_name": "ADD", "inputs": [0], "outputs": [1]},  # stage 1 output
           {"op_name": "DEPTHWISE_CONV_2D", "inputs": [1], "outputs": [2]},  # same shape as the residual
           {"op_name": "CONV_2D", "inputs": [2], "outputs": [3]},  # the residual (project conv)
           {"op_name": "CONV_2D", "inputs": [3], "outputs": [4]},  # conv_local
           {"op_name": "RESHAPE", "inputs": [4], "outputs": [6]},
           {"op_name": "ADD", "inputs": [6], "outputs": [7]},  # tokens after LayerNorm
           {"op_name": "RESHAPE", "inputs": [7], "outputs": [5]},
           {"op_name": "CONV_2D", "inputs": [5], "outputs": [8]},  # conv_proj
           {"op_name": "CONCATENATION", "inputs": [3, 8], "outputs": [9]},
           {"op_name": "CONV_2D", "inputs": [9], "outputs": [10]},  # fusion: stage 2 output
           {"op_name": "CONV_2D", "inputs": [10], "outputs": [11]}]
    points = [_Point("s1", 1, "output", s0), _Point("res", 2, "residual", s2),
              _Point("tok", 2, "tokens", tok), _Point("s2", 2, "output", s2)]
    assert match_points(points, ops, shapes) == [1, 3, 7, 10]
    missing = [_Point("s3", 3, "output", (1, 8, 8, 80))]
    assert match_points(missing, ops, shapes) == [None]


def test_markdown_localisation_and_over_tolerance_rows():
    from benchmarks.report import render_markdown

    lat = {"median_ms": 5.0, "iqr_ms": 0.1, "p25_ms": 4.9, "p75_ms": 5.0, "spread_warning": False,
           "ci95_low_ms": 4.9, "ci95_high_ms": 5.1, "gflops": 100.0, "peak_kind": "int8",
           "fraction_of_peak": 100 / 900, "over_peak": False}
    d = {"max_abs": 1.0, "mean_abs": 0.1, "cosine_min": 0.5, "top1_agreement": 0.25, "top5_agreement": 0.5}
    loc = {"message": "drift appears at stage 2 inverted residual (stride 8)",
           "method": "intermediate tensors",
           "points": [{"point": "stage 1 output", "stage": 1, "cosine_min": 0.93, "max_abs_rel": 0.16,
                       "ok": True},
                      {"point": "stage 2 inverted residual", "stage": 2, "cosine_min": 0.88,
                       "max_abs_rel": 0.2, "ok": False}],
           "builtin_kernels_logits": {"cosine_min": 0.6, "max_abs_rel": 0.7, "top1_agreement": 0.25}}
    row = {"variant": "xx_small", "name": "litert int8", "runtime": "litert", "target": "tflite",
           "version": "2.1.0", "precision": "int8", "source": "ours", "patches": "slice",
           "attention": "split", "drift": d, "latency": {"1": lat}, "within_tolerance": False,
           "localization": loc, "tolerance": {"max_abs_rel": 0.6, "cosine_min": 0.9, "top1_min": 0.5}}
    result = {"meta": {"created": "now", "command": "python -m benchmarks", "seed": 0,
                       "machine": {"cpu": "cpu", "logical_cores": 2}, "weights": "w",
                       "repeats": 5, "images": 4, "threads": [1], "seconds": 1.0,
                       "android": {"available": False, "reason": "skipped: adb is not installed"}},
              "variants": [{"variant": "xx_small", "macs": 10 ** 9, "rows": [row], "targets": {"1": []},
                            "peaks": {"used": {"fp32_gflops": {"1": 200.0}, "int8_gops": {"1": 900.0}}}}]}
    md = render_markdown(result)
    assert "| **over** |" in md and "1.00e+00 | 0.50000 | 25% | 50% |" in md
    assert "- **litert int8**: drift appears at stage 2 inverted residual (stride 8)" in md
    assert "stage 2 inverted residual: cos 0.8800, rel 0.2 ✗" in md and "(no XNNPACK): cos 0.6000" in md
    assert "| tflite | int8 | 0.6 | 0.9 | 50% |" in md and "skipped: adb is not installed" in md


@pytest.mark.parametrize("argv, says", [
    (["--targets", "pytorch,tensorrt"], "--targets: unknown tensorrt; choose from pytorch, coreml, onnx, tflite"),
    (["--variants", "large"], "--variants: unknown large; choose from xx_small, x_small, small"),
    (["--precisions", "int4"], "--precisions: unknown int4"),
    (["--threads", "0"], "--threads: expected positive integers"),
    (["--repeats", "0"], "--repeats must be at least 1"),
])
def test_bad_arguments_stop_with_the_valid_choices(argv, says, capsys):
    from benchmarks.__main__ import main

    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2 and says in capsys.readouterr().err


# ------------------------------------------------------------------- methodology on hand-made samples
def _row(name, samples, source="ours", runtime="onnxruntime", precision="fp32", top1=1.0, cosine=1.0, target="onnx"):
    return {"name": name, "source": source, "runtime": runtime, "precision": precision, "target": target,
            "drift": {"top1_agreement": top1, "cosine_mean": cosine}, "latency": {"1": {"samples_ms": samples,
                                                                "median_ms": float(np.median(samples))}}}


def _status(rows, label):
    return next(t for t in target_status({"rows": rows}, "1") if t["target"].startswith(label))


def test_a_target_is_met_only_when_the_whole_interval_is_on_its_side():
    rng = np.random.default_rng(0)
    base = list(10 + rng.normal(0, 0.1, 40))
    clear = [_row("onnxruntime fp32", list(5 + rng.normal(0, 0.05, 40))),
             _row("baseline hf-as-is onnxruntime fp32", base, source="hf-as-is")]
    t = _status(clear, "onnxruntime fp32 / HF as-is")
    assert t["status"] == "met" and t["ci95_high"] < 0.85 and 0.45 < t["value"] < 0.55  # 5 ms / 10 ms
    slow = [_row("onnxruntime fp32", list(9.5 + rng.normal(0, 0.05, 40))), clear[1]]
    assert _status(slow, "onnxruntime fp32 / HF as-is")["status"] == "not met"  # ~0.95, all above 0.85
    # bimodal: half the runs at 7.5 ms, half at 9.5 ms -> the median's interval spans 0.75..0.95
    bimodal = [_row("onnxruntime fp32", [7.5] * 20 + [9.5] * 21), clear[1]]
    t = _status(bimodal, "onnxruntime fp32 / HF as-is")
    assert t["status"] == "undecided" and t["ci95_low"] < 0.85 < t["ci95_high"]
    assert _status(clear, "TFLite fp32 / HF as-is")["status"] == "not measured"


def test_int8_speed_up_needs_speed_and_cosine_per_runtime():
    fp32 = _row("onnxruntime fp32", [10.0] * 20)
    fp16 = _row("onnxruntime fp16", [9.0] * 20, precision="fp16", top1=0.875)
    fast_but_wrong = _row("onnxruntime int8", [4.0] * 20, precision="int8", top1=1.0, cosine=0.998)
    t = _status([fp32, fp16, fast_but_wrong], "best int8 of onnxruntime")
    assert t["value"] == pytest.approx(2.5) and t["status"] == "not met"  # 2.5x, but cosine 0.998 < 0.999
    assert "top-1 agreement 100% (fp16: 88%)" in t["note"]
    right = _row("onnxruntime int8", [4.0] * 20, precision="int8", top1=0.9, cosine=0.9995)
    assert _status([fp32, right], "best int8 of onnxruntime")["status"] == "met"  # agreement is reported, not judged
    slow = _row("onnxruntime int8", [8.0] * 20, precision="int8")
    assert _status([fp32, slow], "best int8 of onnxruntime")["value"] == pytest.approx(1.25)
    # the faithful row is preferred over a faster one that misses the cosine target
    fast_dynamic = _row("onnxruntime int8_dynamic", [5.0] * 20, precision="int8_dynamic", cosine=0.99)
    t = _status([fp32, slow, fast_dynamic], "best int8 of onnxruntime")
    assert t["value"] == pytest.approx(1.25) and "(int8)" in t["target"]
    litert = [_row("litert fp32", [10.0] * 20, runtime="litert"),
              _row("litert int8", [4.5] * 20, runtime="litert", precision="int8", cosine=0.9999)]
    both = target_status({"rows": [fp32, slow, *litert, _row("torch fp32", [9.0] * 20, runtime="torch")]}, "1")
    assert [t["status"] for t in both if t["target"].startswith("best int8")] == ["not met", "met"]  # none for torch


def test_fraction_of_peak_only_against_the_matching_peak_and_flagged_above_it():
    from benchmarks.harness import _roofline

    peaks = {"fp32_gflops": {"1": 100.0}, "int8_gops": {"1": 1000.0}}
    macs = 500_000_000  # 1 GFLOP per run: 10 ms -> 100 GFLOP/s, 5 ms -> 200 GFLOP/s
    at_peak, over, int8, fp16 = {"median_ms": 10.0}, {"median_ms": 5.0}, {"median_ms": 5.0}, {"median_ms": 5.0}
    _roofline(at_peak, "fp32", macs, peaks, "1")
    _roofline(over, "fp32", macs, peaks, "1")
    _roofline(int8, "int8_dynamic", macs, peaks, "1")
    _roofline(fp16, "fp16", macs, peaks, "1")
    assert at_peak["fraction_of_peak"] == pytest.approx(1.0) and at_peak["over_peak"] is False
    assert over["fraction_of_peak"] == pytest.approx(2.0) and over["over_peak"] is True
    assert int8["peak_kind"] == "int8" and int8["fraction_of_peak"] == pytest.approx(0.2)
    assert fp16["fraction_of_peak"] is None and fp16["gflops"] == pytest.approx(200.0)


class _SlowPrepare:
    """A runner whose input conversion takes 30 ms and whose call takes none."""

    timeable = True

    def __init__(self):
        self.calls = 0

    def prepare(self, x):
        import time

        time.sleep(0.03)
        return x

    def run(self, feed):
        self.calls += 1
        return feed


def test_latency_times_the_call_only_in_seeded_shuffled_rounds():
    from benchmarks.harness import Entry, measure_latency

    def entries():
        return [Entry(f"row{i}", "fake", "pytorch", "fp32", "ours", "-", "-", lambda t: _SlowPrepare())
                for i in range(4)]

    x = np.zeros((1, 3, 8, 8), np.float32)
    first, again = entries(), entries()
    orders = measure_latency(first, [1], repeats=30, warmup=1, x=x, seed=3)
    assert orders == measure_latency(again, [1], repeats=30, warmup=1, x=x, seed=3)  # recorded and repeatable
    assert len(orders["1"]) == 6 and all(sorted(o) == [f"row{i}" for i in range(4)] for o in orders["1"])
    assert len({tuple(o) for o in orders["1"]}) > 1  # shuffled, not a fixed order
    for e in first:
        lat = e.results["latency"]["1"]
        assert lat["n"] == 30 and lat["median_ms"] < 5.0  # the 30 ms conversion is not in the timing


def test_readme_figures_are_the_committed_results_of_the_named_commands():
    """`make readme` pasted the committed files, and those were made by the commands the README names."""
    from benchmarks.readme import BLOCK, ROOT

    readme = (ROOT / "README.md").read_text()
    blocks = {m.group("name"): m.group("body") for m in BLOCK.finditer(readme)}
    assert set(blocks) == {"strategies", "bench", "accuracy", "accuracy_memory", "quant", "int8", "segmentation",
                           "scaling", "int8search", "int8search_tflite", "profile", "executor", "int8search_amx",
                           "int8search_tflite_amx", "int8search_executorch_amx", "profile_amx",
                           "int8search_onnx_macs", "int8search_tflite_macs", "int8search_executorch_macs",
                           "int8search_coreml_macs"}
    for name, body in blocks.items():
        assert body.rstrip() == (ROOT / "benchmarks" / "results" / f"{name}.md").read_text().rstrip(), name
    bench = json.loads((ROOT / "benchmarks" / "results" / "bench.json").read_text())["meta"]
    assert bench["command"] == "python -m benchmarks --quick"
    assert "`make bench` (`python -m benchmarks --quick`" in readme
    strategies = json.loads((ROOT / "benchmarks" / "results" / "strategies.json").read_text())["meta"]
    assert strategies["command"].strip() == "python -m benchmarks.strategies" and strategies["repeats"] == 50
    int8 = json.loads((ROOT / "benchmarks" / "results" / "int8.json").read_text())["meta"]
    named = ("python -m benchmarks --variants xx_small,small --targets onnx,tflite,executorch "
             "--precisions fp32,fp16,int8,int8_dynamic --threads 1 --no-baseline --stem int8")
    assert int8["command"] == named and " ".join(named.split()[3:6]) in " ".join(readme.split())
    quant = json.loads((ROOT / "benchmarks" / "results" / "quant.json").read_text())
    assert set(quant["targets"]) == {"onnx", "tflite", "coreml", "executorch"}
    assert all(t["command"].startswith("python -m benchmarks.quant") for t in quant["targets"].values())
    segmentation = json.loads((ROOT / "benchmarks" / "results" / "segmentation.json").read_text())["meta"]
    assert segmentation["command"] == "python -m benchmarks.segmentation" and segmentation["size"] == 512
    assert "`make bench-segmentation`, i.e. `python -m benchmarks.segmentation`" in readme
    # the plain commands the README names, at their defaults
    for name in ("scaling", "int8search"):
        meta = json.loads((ROOT / "benchmarks" / "results" / f"{name}.json").read_text())["meta"]
        assert meta["command"] == f"python -m benchmarks.{name}", name
        assert f"`python -m benchmarks.{name}" in readme, name
    tflite = json.loads((ROOT / "benchmarks" / "results" / "int8search_tflite.json").read_text())["meta"]
    assert tflite["command"] == "python -m benchmarks.int8search --target tflite --stem int8search_tflite"
    assert f"`{tflite['command']}`" in readme and tflite["target"] == "tflite"
    for stem, target in (("int8search_amx", "onnx"), ("int8search_tflite_amx", "tflite"),
                         ("int8search_executorch_amx", "executorch")):  # the Xeon runs: AMX, as their text says
        meta = json.loads((ROOT / "benchmarks" / "results" / f"{stem}.json").read_text())["meta"]
        assert meta["command"] == f"python -m benchmarks.int8search --target {target} --stem {stem}", stem
        assert f"    {meta['command']}\n" in readme and meta["cpu"]["int8_extensions"]["amx_int8"], stem
    for target in ("onnx", "tflite", "executorch", "coreml"):  # the most MACs in int8 under the budget
        meta = json.loads((ROOT / "benchmarks" / "results" / f"int8search_{target}_macs.json").read_text())["meta"]
        assert meta["command"] == (f"python -m benchmarks.int8search --target {target} --int8-objective macs "
                                   f"--stem int8search_{target}_macs") and meta["objective"] == "macs", target
        assert f"    {meta['command']}\n" in readme, target
    amx = json.loads((ROOT / "benchmarks" / "results" / "profile_amx.json").read_text())["meta"]
    assert amx["command"].startswith("python -m benchmarks.profile artifacts/profile/")
    assert amx["command"].endswith("--stem profile_amx") and amx["cpu"]["int8_extensions"]["amx_int8"]
    assert "benchmarks.profile artifacts/profile/*/*.onnx artifacts/profile/*/*.pte --stem profile_amx" in readme
    profile = json.loads((ROOT / "benchmarks" / "results" / "profile.json").read_text())["meta"]
    assert profile["command"].startswith("python -m benchmarks.profile artifacts/profile/")
    assert "python -m benchmarks.profile artifacts/profile/*/*.onnx artifacts/profile/*/*.pte" in readme
    executor = json.loads((ROOT / "benchmarks" / "results" / "executor.json").read_text())["meta"]
    assert executor["command"].startswith("python -m benchmarks.executor artifacts/executor/")
    assert executor["command"].endswith("--images 8") and executor["threads"] == 1
    assert "`python -m benchmarks.executor artifacts/executor/*/*.mlpackage --images 8`" in readme
