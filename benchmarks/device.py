"""Phone runtimes: TFLite's ``benchmark_model`` over adb, and how to profile Core ML on an iPhone.

Android: push the ``.tflite`` and the ``benchmark_model`` binary (from the TensorFlow Lite
releases) to ``/data/local/tmp`` and run it; :func:`parse_benchmark_model` reads its output.
iPhone: open the ``.mlpackage`` in Xcode, choose the *Performance* tab, pick a connected device
and compute units, and run the report (per-op compute unit and load/predict times); or use
``coremltools``' ``MLModel.predict`` timing on a Mac. Neither device exists on this machine:
:func:`run_on_android` says so and returns ``None``.
"""
from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

_TIMINGS = re.compile(r"Inference timings in us:\s*(?P<body>.*)")
_FIELD = re.compile(r"([A-Za-z][A-Za-z ()]*?):\s*([\d.e+-]+)")


def parse_benchmark_model(text: str) -> dict:
    """Numbers from ``benchmark_model`` output: timings (us), the steady-state line, memory (MB)."""
    out: dict = {}
    for line in text.splitlines():
        m = _TIMINGS.search(line)
        if m:
            out["timings_us"] = {k.strip(): float(v) for k, v in _FIELD.findall(m.group("body"))}
            continue
        if line.strip().startswith("count=") and "avg=" in line:  # a timed run (not the profiler's summary)
            stats = dict(re.findall(r"(\w+)=([\d.e+-]+)", line))
            out.setdefault("runs", []).append({k: float(v) for k, v in stats.items()})
        m = re.search(r"(?:Memory footprint delta from the start of the tool|Peak memory footprint) \(MB\): "
                      r"init=([\d.]+) overall=([\d.]+)", line)
        if m:
            out["memory_mb"] = {"init": float(m.group(1)), "overall": float(m.group(2))}
        m = re.search(r"Overall peak memory footprint \(MB\) via periodic monitoring: ([\d.]+)", line)
        if m:
            out["peak_memory_mb"] = float(m.group(1))
    if "runs" in out:
        out["inference_avg_us"] = out["runs"][-1].get("avg")
    return out


def adb_devices() -> list[str]:
    """Serials of attached Android devices ([] without adb or devices)."""
    adb = shutil.which("adb")
    if adb is None:
        return []
    res = subprocess.run([adb, "devices"], capture_output=True, text=True, timeout=30)
    return [line.split()[0] for line in res.stdout.splitlines()[1:] if line.strip().endswith("device")]


def run_on_android(tflite: Path, binary: Path, threads: int = 4, runs: int = 50) -> dict | None:
    """Run ``benchmark_model`` on the first attached device; ``None`` (and a message) without one."""
    devices = adb_devices()
    if not devices:
        print("[bench] no Android device attached (or adb not installed): skipping on-device TFLite")
        return None
    adb, remote = shutil.which("adb"), "/data/local/tmp"
    subprocess.run([adb, "push", str(binary), f"{remote}/benchmark_model"], check=True, timeout=120)
    subprocess.run([adb, "push", str(tflite), f"{remote}/{tflite.name}"], check=True, timeout=120)
    cmd = (f"chmod +x {remote}/benchmark_model && {remote}/benchmark_model --graph={remote}/{tflite.name} "
           f"--num_threads={threads} --num_runs={runs} --use_xnnpack=true")
    res = subprocess.run([adb, "shell", cmd], capture_output=True, text=True, timeout=600)
    return {"device": devices[0], **parse_benchmark_model(res.stdout + res.stderr)}
