"""Phone runtimes: TFLite's ``benchmark_model`` over adb, and how to profile Core ML on an iPhone.

Android: ``python -m benchmarks --android-binary PATH`` pushes each ``.tflite`` of the run and the
``benchmark_model`` binary (prebuilt nightly: ``https://storage.googleapis.com/tensorflow-nightly-public/
prod/tensorflow/release/lite/tools/nightly/latest/android_aarch64_benchmark_model``) to
``/data/local/tmp``, runs it with XNNPACK, and :func:`parse_benchmark_model` reads its output.
iPhone: open the ``.mlpackage`` in Xcode, choose the *Performance* tab, pick a connected device
and compute units, and run the report (per-op compute unit and load/predict times); or use
``coremltools``' ``MLModel.predict`` timing on a Mac. Without adb or a device,
:func:`android_status` says which, and the run reports the phone rows as skipped.
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


def android_status(binary: Path | None = None) -> dict:
    """Whether TFLite can be timed on a phone in this run: ``{"available": bool, "reason": str, ...}``."""
    if shutil.which("adb") is None:
        return {"available": False, "reason": "skipped: adb is not installed"}
    devices = adb_devices()
    if not devices:
        return {"available": False, "reason": "skipped: no Android device attached"}
    if binary is None or not Path(binary).is_file():
        return {"available": False, "device": devices[0],
                "reason": "skipped: pass --android-binary (TFLite's benchmark_model built for the phone)"}
    return {"available": True, "device": devices[0], "reason": ""}


def run_on_android(tflite: Path, binary: Path, threads: int = 4, runs: int = 50) -> dict | None:
    """Run ``benchmark_model`` on the first attached device; ``None`` (and a message) without one."""
    devices = adb_devices()
    if not devices:
        print("[bench] no Android device attached (or adb not installed): skipping on-device TFLite")
        return None
    adb, remote = shutil.which("adb"), "/data/local/tmp"
    name = f"bench_{abs(hash(str(tflite))) % 10**8}_{tflite.name}"  # ours and the baseline share file names
    subprocess.run([adb, "push", str(binary), f"{remote}/benchmark_model"], check=True, timeout=120)
    subprocess.run([adb, "push", str(tflite), f"{remote}/{name}"], check=True, timeout=120)
    cmd = (f"chmod +x {remote}/benchmark_model && {remote}/benchmark_model --graph={remote}/{name} "
           f"--num_threads={threads} --num_runs={runs} --use_xnnpack=true")
    res = subprocess.run([adb, "shell", cmd], capture_output=True, text=True, timeout=600)
    subprocess.run([adb, "shell", f"rm -f {remote}/{name}"], timeout=60)
    return {"device": devices[0], "threads": threads, **parse_benchmark_model(res.stdout + res.stderr)}
