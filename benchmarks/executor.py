"""``python -m benchmarks.executor ARTIFACT... [--modes numpy:fp64,torch:fp64,torch:fp32] [--images 8]``: how fast
a reference executor's kernel sets run, and how far each one's outputs stand from the first (the reference).

The Core ML reference executor runs one program walk on two kernel sets (``kernels="numpy"``, the reference,
and ``"torch"``) with float64 or float32 sums (``accumulate``). Each artifact (an exported folder: its
``manifest.json`` gives the variant and size) is run by its registered runner (``export.make_runner``, 1
thread) once per mode on the same photos, one at a time. Figures per mode:

* CPU time per photo (process time, so every thread a kernel uses counts; torch and numpy's BLAS both held to
  1 thread), median over the photos, after one warm-up photo, and the speed-up of the first mode's median
  over it;
* max |output - first mode's output| over the first mode's output range (max - min over all photos), and
  whether the outputs are bit-equal.

The issue's target is a 10x speed-up at 1e-6 of the logit range; the table says which modes meet each part.
Results: ``--out``'s ``executor.{json,md}`` (default ``benchmarks/results``), with the CPU.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from .harness import EXIT_BAD_INPUT, BenchmarkInputError, artifact_manifest, artifact_photos, run_meta, write_result

RESULTS = Path(__file__).parent / "results"
DEFAULT_MODES = "numpy:fp64,torch:fp64,torch:fp32"
TARGET_SPEEDUP = 10.0  # issue 24: at least 10x the reference's images/s at 1 thread ...
TARGET_AGREEMENT = 1e-6  # ... with outputs within this fraction of the logit range


def parse_modes(text: str) -> list[tuple[str, str]]:
    """``"numpy:fp64,torch:fp32"`` -> ``[("numpy", "fp64"), ("torch", "fp32")]`` (kernels, accumulate)."""
    modes = []
    for item in (s.strip() for s in text.split(",") if s.strip()):
        kernels, sep, accumulate = item.partition(":")
        if not sep or not kernels or not accumulate:
            raise BenchmarkInputError(f"--modes {text!r}: give KERNELS:ACCUMULATE pairs, e.g. {DEFAULT_MODES}")
        modes.append((kernels, accumulate))
    if len(modes) < 2:
        raise BenchmarkInputError(f"--modes {text!r}: give the reference and at least one mode to compare with it")
    return modes


def measure(path: str | Path, modes: list[tuple[str, str]], images: int) -> dict:
    """One artifact's rows, the first mode the reference."""
    from threadpoolctl import threadpool_limits

    from export import make_runner

    path = Path(path)
    manifest = artifact_manifest(path)
    x = artifact_photos(manifest, images)
    rows, ref, ref_ms = [], None, None
    for kernels, accumulate in modes:
        try:
            runner = make_runner(path, 1, kernels=kernels, accumulate=accumulate)
        except TypeError as e:
            raise BenchmarkInputError(f"{path}: its runner has no kernel sets to compare ({e})") from None
        except ValueError as e:
            raise BenchmarkInputError(f"{path}: mode {kernels}:{accumulate}: {e}") from None
        feeds = [runner.prepare(x[i:i + 1]) for i in range(len(x))]
        seconds, outs = [], []
        with threadpool_limits(1):  # numpy's BLAS at 1 thread too (idle BLAS threads spin and burn CPU time)
            runner.run(feeds[0])  # warm-up: first-call allocations and lazy imports
            for feed in feeds:
                start = time.process_time()
                outs.append(runner.run(feed))
                seconds.append(time.process_time() - start)
        y = np.concatenate(outs).astype(np.float64)
        ms = 1e3 * float(np.median(seconds))
        if ref is None:
            ref, ref_ms = y, ms
        span = float(ref.max() - ref.min()) or 1.0
        diff = float(np.abs(y - ref).max()) / span
        rows.append({"kernels": kernels, "accumulate": accumulate, "runtime": runner.version,
                     "cpu_ms_per_image": round(ms, 2), "speedup": round(ref_ms / ms, 3),
                     "max_diff_over_range": diff, "bit_equal": bool(np.array_equal(y, ref)),
                     "meets_speed": ref_ms / ms >= TARGET_SPEEDUP, "meets_agreement": diff <= TARGET_AGREEMENT})
    return {"artifact": path.name, "precision": manifest.get("precision"), "variant": manifest.get("variant"),
            "size": int(manifest["input"]["shape"][-1]), "images": len(x), "modes": rows}


def render(result: dict) -> str:
    m = result["meta"]
    cpu = m["cpu"]
    extensions = ", ".join(k for k, v in cpu.get("int8_extensions", {}).items() if v) or "none"
    lines = [f"Reference executor kernel sets at 1 thread, CPU time per image (median of {m['images']} photos), "
             f"on {cpu.get('cpu')} (family {cpu.get('cpu_family')} model {cpu.get('cpu_model')}, "
             f"{cpu.get('logical_cores')} cores; int8 extensions: {extensions}), "
             f"{m['created']}. Command: `{m['command']}`.",
             f"Target: >= {TARGET_SPEEDUP:g}x the first mode, outputs within {TARGET_AGREEMENT:g} of its range.", "",
             "| artifact | kernels | sums | CPU ms / image | speed-up | max diff / output range | bit-equal | meets |",
             "|---|---|---|---|---|---|---|---|"]
    for a in result["artifacts"]:
        for r in a["modes"]:
            meets = ("(reference)" if r is a["modes"][0] else
                     "both" if r["meets_speed"] and r["meets_agreement"] else
                     "agreement only" if r["meets_agreement"] else "speed only" if r["meets_speed"] else "neither")
            lines.append(f"| {a['variant']} {a['precision']} ({a['size']}px) | {r['kernels']} | {r['accumulate']} | "
                         f"{r['cpu_ms_per_image']:.1f} | {r['speedup']:.2f}x | {r['max_diff_over_range']:.2e} | "
                         f"{'yes' if r['bit_equal'] else 'no'} | {meets} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.executor", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("artifacts", nargs="+", help="exported artifacts run by a reference executor (.mlpackage)")
    p.add_argument("--modes", default=DEFAULT_MODES, help=f"KERNELS:ACCUMULATE list, the first the reference "
                                                          f"(default {DEFAULT_MODES})")
    p.add_argument("--images", type=int, default=8)
    p.add_argument("--out", type=Path, default=RESULTS)
    a = p.parse_args(argv)
    try:
        if a.images < 1:
            raise BenchmarkInputError(f"--images {a.images}: give at least 1")
        modes = parse_modes(a.modes)
        rows = [measure(path, modes, a.images) for path in a.artifacts]
    except BenchmarkInputError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    result = {"meta": {**run_meta("python -m benchmarks.executor", argv), "threads": 1, "images": a.images,
                       "modes": [f"{k}:{s}" for k, s in modes]}, "artifacts": rows}
    write_result(a.out, "executor", result, render(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
