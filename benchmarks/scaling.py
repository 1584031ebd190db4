"""``python -m benchmarks.scaling``: images/s of one accuracy job in one process and on a Ray cluster.

The same job (``python -m benchmarks.accuracy``: a synthetic xx_small checkpoint, ``--limit`` photos from the
installed packages filed under ImageNet synsets, PyTorch and the requested artifacts) runs

* in one process at 1 thread (the local engine),
* on a Ray cluster started on this machine, with 1 and with 2 workers (1 thread each),

with the artifacts converted once, by the first run, and reused by the others (as a resumed run does). Per run
and artifact: the wall time of its predictions and images/s; per Ray run, the ratio to the one-process run
(the engine's overhead is ``1 - ratio / workers``) and the cluster's start-up time, kept apart. From the
measured one-process cost per image of each artifact, the wall time of 50,000 images on 1, 8 and 64 workers
(cost x images / workers: the linear estimate, which the measured 2-worker efficiency qualifies).

Results: ``benchmarks/results/scaling.{json,md}`` (the README's table). Record the CPU with them: absolute
figures differ between machines; the ratios are the result.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

from mobilevit.atomic import write_text

from .accuracy import run_folder
from .margins import cpu_info

RESULTS = Path(__file__).parent / "results"
ESTIMATE_IMAGES = 50_000
ESTIMATE_WORKERS = (1, 8, 64)


def _run(ckpt: Path, images: Path, out: Path, seed_state: Path | None, **kw) -> dict:
    """One accuracy run; ``seed_state``: an earlier run's state, so its artifacts are reused, not converted."""
    if seed_state is not None:
        (out / "predictions").mkdir(parents=True)
        shutil.copy(seed_state, out / "predictions" / "run.json")
    start = time.perf_counter()
    result = run_folder(ckpt, images, out=out, progress=False, **kw)
    result["meta"]["wall_seconds"] = round(time.perf_counter() - start, 2)
    return result


def measure(limit: int, targets: list[str], precisions: list[str], workers: list[int], batch: int) -> dict:
    from .memory import make_inputs

    with tempfile.TemporaryDirectory(prefix="scaling-") as tmp:
        work = Path(tmp)
        ckpt, images = make_inputs(work)
        kw = dict(targets=targets, precisions=precisions, limit=limit, batch=batch)
        runs = {"local": _run(ckpt, images, work / "local", None, threads=1, **kw)}
        state = work / "local" / "predictions" / "run.json"
        for w in workers:
            runs[f"ray-{w}"] = _run(ckpt, images, work / f"ray{w}", state, ray="local", workers=w, **kw)
    return {name: r["meta"] | {"rows": [{k: row.get(k) for k in ("artifact", "runtime", "error", "top1")}
                                        for row in r["rows"]]} for name, r in runs.items()}


def summarise(runs: dict, limit: int) -> dict:
    local = runs["local"]["timing"]
    table = []
    for name, meta in runs.items():
        workers = meta["engine"].get("workers", 1)
        for artifact, t in meta["timing"].items():
            ips = t["files"] / t["seconds"]
            ratio = local[artifact]["seconds"] / t["seconds"]
            table.append({"run": name, "workers": workers, "artifact": artifact, "files": t["files"],
                          "seconds": t["seconds"], "images_per_s": round(ips, 2), "speedup": round(ratio, 3),
                          "efficiency": round(ratio / workers, 3)})
    totals = {}
    for name, meta in runs.items():
        seconds = sum(t["seconds"] for t in meta["timing"].values())
        totals[name] = {"prediction_seconds": round(seconds, 2), "wall_seconds": meta["wall_seconds"],
                        "speedup": round(sum(t["seconds"] for t in local.values()) / seconds, 3),
                        "workers": meta["engine"].get("workers", 1)}
    per_image = {a: t["seconds"] / t["files"] for a, t in local.items()}
    return {"images": limit, "table": table, "totals": totals,
            "one_process_seconds_per_image": {a: round(v, 4) for a, v in per_image.items()}}


def render(result: dict) -> str:
    m = result["meta"]
    cpu = m["cpu"]
    ext = ", ".join(f for f, on in cpu["int8_extensions"].items() if on) or "none"
    lines = [f"One accuracy job ({m['images']} photos, synthetic xx_small at 256x256, batch {m['batch']}; "
             f"{cpu['cpu']}, family {cpu['cpu_family']} model {cpu['cpu_model']}, {cpu['logical_cores']} cores, "
             f"int8 extensions: {ext}; {m['created']}): images/s per artifact in one process at 1 thread and on "
             "a Ray cluster on this machine (1 thread per worker). Speed-up: one-process time / this run's time.", "",
             "| run | workers | artifact | images/s | speed-up | per worker |", "|---|---|---|---|---|---|"]
    for r in result["table"]:
        lines.append(f"| {r['run']} | {r['workers']} | {r['artifact']} | {r['images_per_s']:.1f} | "
                     f"{r['speedup']:.2f}x | {100 * r['efficiency']:.0f}% |")
    lines += ["", "| run | prediction time | speed-up | whole run (with cluster start and conversions) |",
              "|---|---|---|---|"]
    for name, t in result["totals"].items():
        lines.append(f"| {name} | {t['prediction_seconds']:.1f} s | {t['speedup']:.2f}x | {t['wall_seconds']:.1f} s |")
    est = result["estimate"]
    lines += ["", f"Estimate for {ESTIMATE_IMAGES:,} images x the {len(est['artifacts'])} artifacts above "
              f"({est['seconds_per_image_all']:.3f} s per image at 1 thread, all artifacts together), at the "
              f"measured {100 * est['efficiency']:.0f}% per-worker efficiency: "
              + ", ".join(f"{w} worker{'s' if w > 1 else ''}: {h:.1f} h" for w, h in est["hours"].items()) + "."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.scaling", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--limit", type=int, default=160, help="photos in the job (default 160)")
    p.add_argument("--targets", default="onnx,coreml", help="targets (default onnx,coreml)")
    p.add_argument("--precisions", default="fp16", help="precisions (default fp16)")
    p.add_argument("--workers", default="1,2", help="Ray worker counts to run (default 1,2)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--out", type=Path, default=RESULTS)
    a = p.parse_args(argv)
    runs = measure(a.limit, a.targets.split(","), a.precisions.split(","), [int(w) for w in a.workers.split(",")],
                   a.batch)
    summary = summarise(runs, a.limit)
    best = max((t for t in summary["totals"].values() if t["workers"] > 1), key=lambda t: t["workers"],
               default=None)
    efficiency = best["speedup"] / best["workers"] if best else 1.0
    per_image = sum(summary["one_process_seconds_per_image"].values())
    estimate = {"artifacts": list(summary["one_process_seconds_per_image"]), "seconds_per_image_all": per_image,
                "efficiency": round(efficiency, 3),
                "hours": {str(w): round(ESTIMATE_IMAGES * per_image / (w * (efficiency if w > 1 else 1)) / 3600, 2)
                          for w in ESTIMATE_WORKERS}}
    result = {"meta": {"created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "cpu": cpu_info(),
                       "images": a.limit, "batch": a.batch, "targets": a.targets, "precisions": a.precisions},
              **summary, "estimate": estimate, "runs": runs}
    a.out.mkdir(parents=True, exist_ok=True)
    write_text(a.out / "scaling.json", json.dumps(result, indent=1) + "\n")
    write_text(a.out / "scaling.md", render(result))
    print(render(result), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
