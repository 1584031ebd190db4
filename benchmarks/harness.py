"""Build every artifact of the matrix, then measure drift and interleaved latency on the same inputs.

Artifacts come from ``export`` (the same converters the CLI uses) and run through
``export.runners``; nothing here re-implements how to convert or run a model.
"""
from __future__ import annotations

import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from export.config import TOLERANCES, target_config
from export.validate import drift, failures
from mobilevit import MobileViT, count_macs

from .peak import gemm_peak_gflops
from .stats import gflops, summarize

RUNTIME_TARGET = {"onnxruntime": "onnx", "litert": "tflite", "coreml": "coreml", "coreml-reference": "coreml"}


@dataclass
class Entry:
    """One row of the matrix: a runtime x precision x source, and how to run it."""

    name: str
    runtime: str
    precision: str
    source: str  # ours | hf-baseline
    patches: str
    attention: str
    make_runner: Callable[[int], Callable[[np.ndarray], np.ndarray]] | None  # threads -> runner
    version: str = ""
    artifact: str = ""
    latency_skip: str = ""  # why latency is not measured (e.g. Core ML off macOS)
    error: str = ""
    results: dict = field(default_factory=dict)


def _say(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def machine_info() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import os

    return {"cpu": cpu, "logical_cores": os.cpu_count(), "system": platform.system(),
            "python": platform.python_version()}


# ---------------------------------------------------------------------------------- torch rows
def torch_entries(model: MobileViT) -> list[Entry]:
    def plain(threads):
        def run(x):
            torch.set_num_threads(threads)
            with torch.no_grad():
                return model(torch.from_numpy(x)).numpy()
        return run

    cl_model = None

    def channels_last(threads):
        nonlocal cl_model
        if cl_model is None:
            cl_model = MobileViT(model.cfg, patches=model.patches).eval()
            cl_model.load_state_dict(model.state_dict())
            cl_model = cl_model.to(memory_format=torch.channels_last)

        def run(x):
            torch.set_num_threads(threads)
            with torch.no_grad():
                return cl_model(torch.from_numpy(x).to(memory_format=torch.channels_last)).numpy()
        return run

    def bf16(threads):
        def run(x):
            torch.set_num_threads(threads)
            with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
                return model(torch.from_numpy(x)).float().numpy()
        return run

    v, p, a = torch.__version__, model.patches.name, _attention(model)
    return [Entry("pytorch fp32", "torch", "fp32", "ours", p, a, plain, v),
            Entry("pytorch fp32 channels-last", "torch", "fp32-cl", "ours", p, a, channels_last, v),
            Entry("pytorch bf16 autocast", "torch", "bf16", "ours", p, a, bf16, v)]


def _attention(model: MobileViT) -> str:
    from mobilevit.model import Attention

    return next((m.layout for m in model.modules() if isinstance(m, Attention)), "batched")


def _artifact_entry(name, runtime, precision, source, labels: tuple[str, str], path: Path) -> Entry:
    """A row for an exported file; ``labels`` = (patch strategy, attention layout)."""
    from export.runners import make_runner

    def factory(threads, path=path):
        return make_runner(path, threads=threads)

    try:
        version = make_runner(path, threads=1).version
    except Exception as e:  # reported in the table
        return Entry(name, runtime, precision, source, *labels, None, artifact=str(path),
                     error=f"{type(e).__name__}: {e}")
    return Entry(name, runtime, precision, source, *labels, factory, version, artifact=str(path))


def _labels(model: MobileViT) -> tuple[str, str]:
    return model.patches.name, _attention(model)


HF_LABELS = ("hf-as-is", "batched")


# ------------------------------------------------------------------------------ artifact rows
def build_entries(model: MobileViT, work: Path, runtimes: set[str], precisions: dict[str, tuple[str, ...]],
                  calibration: np.ndarray, baseline: bool) -> list[Entry]:
    """Export everything the matrix asks for into ``work`` and return the rows."""
    from export.runners import coreml_runtime_available

    entries: list[Entry] = torch_entries(model) if "torch" in runtimes else []
    cfg_name = model.cfg.name
    if "onnxruntime" in runtimes:
        from export.onnx import convert_onnx_precision, export_onnx

        m = _with_target_defaults(model, "onnx")
        _say("exporting ONNX ...")
        fp32 = export_onnx(m, work / "ours_fp32.onnx")
        for precision in precisions["onnx"]:
            path = fp32 if precision == "fp32" else convert_onnx_precision(
                fp32, work / f"ours_{precision}.onnx", precision, calibration)
            entries.append(_artifact_entry(f"onnxruntime {precision}", "onnxruntime", precision, "ours", _labels(m),
                                           path))
    if "litert" in runtimes:
        from export.tflite import export_tflite

        m = _with_target_defaults(model, "tflite")
        _say("exporting TFLite through onnx2tf (about a minute) ...")
        try:
            made = export_tflite(m, work / "tflite", precisions=precisions["tflite"], calibration=calibration)
            for precision, path in made.items():
                entries.append(_artifact_entry(f"litert {precision}", "litert", precision, "ours", _labels(m), path))
        except Exception as e:
            entries.append(Entry("litert", "litert", "?", "ours", *_labels(m), None, error=f"conversion failed: {e}"))
    if "coreml" in runtimes:
        from export.coreml import CoreMLOptions, convert_coreml

        m = _with_target_defaults(model, "coreml")
        on_mac, _ = coreml_runtime_available()
        for precision in precisions["coreml"]:
            _say(f"exporting Core ML {precision} ...")
            path = work / f"ours_{precision}.mlpackage"
            convert_coreml(m, CoreMLOptions(precision=precision, input_kind="tensor", output_kind="logits")).save(
                str(path))
            entry = _artifact_entry(f"coreml {precision}", "coreml" if on_mac else "coreml-reference", precision,
                                    "ours", _labels(m), path)
            if not on_mac:
                entry.latency_skip = "skipped: needs macOS"  # drift comes from the reference executor
            entries.append(entry)
    if baseline:
        from .baseline import export_hf_onnx

        _say("exporting the Hugging Face baseline (as-is) ...")
        hf_onnx = export_hf_onnx(model, work / "hf_fp32.onnx")
        if "onnxruntime" in runtimes:
            entries.append(_artifact_entry("baseline HF onnxruntime fp32", "onnxruntime", "fp32", "hf-baseline",
                                           HF_LABELS, hf_onnx))
        if "litert" in runtimes:
            from export.tflite import onnx_to_tflite

            try:
                path = onnx_to_tflite(hf_onnx, work / "hf_tflite", precisions=("fp32",), calibration=calibration)
                entries.append(_artifact_entry("baseline HF litert fp32", "litert", "fp32", "hf-baseline",
                                               HF_LABELS, path["fp32"]))
            except Exception as e:
                entries.append(Entry("baseline HF litert fp32", "litert", "fp32", "hf-baseline", *HF_LABELS, None,
                                     error=f"conversion failed: {e}"))
    _say(f"{len(entries)} rows for {cfg_name}")
    return entries


def _with_target_defaults(model: MobileViT, target: str) -> MobileViT:
    """A copy of ``model`` with the target's default patch strategy and attention layout."""
    cfg = target_config(target)
    m = MobileViT(model.cfg, patches=cfg.default_patches).eval()
    m.load_state_dict(model.state_dict())
    return m.set_attention(cfg.default_attention)


# ---------------------------------------------------------------------------------- measuring
def measure_drift(entries: list[Entry], model: MobileViT, images: np.ndarray) -> None:
    with torch.no_grad():
        reference = model(torch.from_numpy(images)).numpy()
    for e in entries:
        if e.make_runner is None:
            continue
        try:
            out = e.make_runner(2)(images)
        except Exception as ex:
            e.error = f"could not run: {type(ex).__name__}: {ex}"
            continue
        d = drift(reference, out)
        e.results["drift"] = d.to_dict()
        target = RUNTIME_TARGET.get(e.runtime)
        tol = TOLERANCES.get((target, e.precision)) if target else None
        if tol is not None:
            e.results["tolerance"] = {"max_abs_rel": tol.max_abs_rel, "cosine_min": tol.cosine_min,
                                      "top1_min": tol.top1_min}
            e.results["within_tolerance"] = not failures(d, tol, e.name)


BLOCK = 5  # timed runs per row per round


def measure_latency(entries: list[Entry], threads_list: list[int], repeats: int, warmup: int,
                    x: np.ndarray, block: int = BLOCK) -> None:
    """Interleaved in short blocks: each round runs every row ``block`` times after one untimed run.

    Rounds spread machine-load changes over all rows alike; blocks (rather than single calls)
    keep one runtime's spinning worker threads (onnxruntime, OpenMP) from stealing the cores of
    the next runtime's measurement, which on 2 cores inflated 2-thread medians by up to 2x.
    """
    for threads in threads_list:
        runners = {}
        for e in entries:
            if e.make_runner is None or e.latency_skip or e.error:
                continue
            runners[e.name] = e.make_runner(threads)
            for _ in range(warmup):
                runners[e.name](x)
        samples = {name: [] for name in runners}
        for _ in range(-(-repeats // block)):
            for name, run in runners.items():
                run(x)  # untimed: let this runtime's threads take the cores back
                for _ in range(block):
                    t = time.perf_counter()
                    run(x)
                    samples[name].append((time.perf_counter() - t) * 1e3)
        for e in entries:
            if e.name in samples:
                s = summarize(samples[e.name])
                s["samples_ms"] = [round(v, 4) for v in samples[e.name]]
                e.results.setdefault("latency", {})[str(threads)] = s
                if s["spread_warning"]:
                    _say(f"warning: {e.name} @ {threads} threads is noisy (IQR {s['spread']:.0%} of the median)")


def run_matrix(model: MobileViT, work: Path, *, runtimes: set[str], precisions: dict[str, tuple[str, ...]],
               threads: list[int], repeats: int, warmup: int, images: np.ndarray, calibration: np.ndarray,
               baseline: bool, weights: str) -> dict:
    """Everything for one variant; returns the JSON-ready result."""
    start = time.time()
    entries = build_entries(model, work, runtimes, precisions, calibration, baseline)
    _say(f"drift on {len(images)} photos ...")
    measure_drift(entries, model, images)
    _say(f"latency: threads {threads}, {repeats} interleaved repeats ...")
    measure_latency(entries, threads, repeats, warmup, images[:1])
    macs = count_macs(model, images.shape[-1])
    peaks = {str(t): gemm_peak_gflops(t) for t in threads}
    rows = []
    for e in entries:
        row = {"variant": model.cfg.name, "name": e.name, "runtime": e.runtime, "version": e.version,
               "precision": e.precision, "source": e.source, "patches": e.patches, "attention": e.attention,
               "artifact": Path(e.artifact).name if e.artifact else "", "latency_skip": e.latency_skip,
               "error": e.error, **e.results}
        for t, lat in row.get("latency", {}).items():
            lat["gflops"] = gflops(macs, lat["median_ms"])
            lat["fraction_of_peak"] = lat["gflops"] / peaks[t]
        rows.append(row)
    return {"variant": model.cfg.name, "macs": macs, "gemm_peak_gflops": peaks, "weights": weights,
            "seconds": round(time.time() - start, 1), "rows": rows}
