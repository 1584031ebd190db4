"""``python -m benchmarks.scaling``: images/s of one accuracy job in one process and on a Ray cluster.

The same job (``python -m benchmarks.accuracy``: a synthetic xx_small checkpoint, ``--limit`` photos from the
installed packages filed under ImageNet synsets, PyTorch and the requested artifacts) runs

* in one process at 1 thread (the local engine),
* on a Ray cluster started on this machine, with 1 and with 2 workers (1 thread each),

with the artifacts converted once, by the first run, and reused by the others (as a resumed run does). Per run
and artifact: the wall time of its predictions and images/s; per Ray run, the ratio to the one-process run
(the engine's overhead is ``1 - ratio / workers``) and the cluster's start-up time, kept apart. From the
measured one-process cost per image of each artifact, the wall time of 50,000 images on 1, 8 and 64 workers
(cost x images / workers at the measured per-worker efficiency). The estimate covers PyTorch and every
precision the registry offers per target, each precision at its target's measured cost (the job measures
one precision per target; at 1 thread the int8 and fp16 artifacts of a runtime run within about 15% of its
fp32, ``benchmarks/results/bench.md``).

Results: ``benchmarks/results/scaling.{json,md,png}`` (the README's table). Record the CPU with them: absolute
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

from export import TARGETS
from mobilevit.atomic import write_atomic, write_text

from .accuracy import run_folder
from .harness import run_meta

RESULTS = Path(__file__).parent / "results"
ESTIMATE_IMAGES = 50_000
ESTIMATE_WORKERS = (1, 8, 64)
LIMIT = 1000  # photos: the one-process job takes minutes, as a real one does (workers start once per pool)


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
        ckpt, images = make_inputs(work, max(limit, 1))
        kw = dict(targets=targets, precisions=precisions, limit=limit, batch=batch)
        runs = {"local": _run(ckpt, images, work / "local", None, threads=1, **kw)}
        state = work / "local" / "predictions" / "run.json"
        for w in workers:
            runs[f"ray-{w}"] = _run(ckpt, images, work / f"ray{w}", state, ray="local", workers=w, **kw)
    return {name: r["meta"] | {"rows": [{k: row.get(k) for k in ("artifact", "runtime", "error", "top1")}
                                        for row in r["rows"]]} for name, r in runs.items()}


def _steady(t: dict, batch: int) -> float:
    """Images/s after the first batch: the rate once the runtime is loaded and the workers started."""
    return (t["files"] - batch) / max(t["seconds"] - t["first_batch_s"], 1e-9)


def summarise(runs: dict, limit: int) -> dict:
    local = runs["local"]["timing"]
    table = []
    for name, meta in runs.items():
        workers = meta["engine"].get("workers", 1)
        for artifact, t in meta["timing"].items():
            ips = t["files"] / t["seconds"]
            ratio = local[artifact]["seconds"] / t["seconds"]
            steady = _steady(t, meta["batch"])
            table.append({"run": name, "workers": workers, "artifact": artifact, "files": t["files"],
                          "seconds": t["seconds"], "first_batch_s": t["first_batch_s"], "images_per_s": round(ips, 2),
                          "speedup": round(ratio, 3), "efficiency": round(ratio / workers, 3),
                          "steady_images_per_s": round(steady, 2),
                          "steady_speedup": round(steady / _steady(local[artifact], meta["batch"]), 3)})
    totals = {}
    for name, meta in runs.items():
        seconds = sum(t["seconds"] for t in meta["timing"].values())
        speedup = sum(t["seconds"] for t in local.values()) / seconds
        workers = meta["engine"].get("workers", 1)
        totals[name] = {"prediction_seconds": round(seconds, 2), "wall_seconds": meta["wall_seconds"],
                        "speedup": round(speedup, 3), "workers": workers,
                        "overhead": round(1 - speedup / workers, 3)}  # the share of the workers' time lost
    per_image = {a: t["seconds"] / t["files"] for a, t in local.items()}
    return {"images": limit, "table": table, "totals": totals,
            "one_process_seconds_per_image": {a: round(v, 6) for a, v in per_image.items()}}


def estimate(summary: dict) -> dict:
    """Hours for ESTIMATE_IMAGES images on ESTIMATE_WORKERS workers: the one-process cost per image of every row,
    divided by workers x the per-worker efficiency the most-workers run measured once started (steady rates:
    for 50,000 images the start-up is negligible)."""
    runs = {}
    for r in summary["table"]:
        runs.setdefault(r["run"], []).append(r)
    most = max(runs.values(), key=lambda rows: rows[0]["workers"])
    workers = most[0]["workers"]
    efficiency = sum(r["steady_speedup"] for r in most) / len(most) / workers if workers > 1 else 1.0
    costs = estimated_costs(summary["one_process_seconds_per_image"])
    per_image = sum(costs.values())
    return {"artifacts": list(costs), "measured": list(summary["one_process_seconds_per_image"]),
            "seconds_per_image_all": round(per_image, 4), "efficiency": round(efficiency, 3),
            "efficiency_from": f"{workers} workers, steady rates",
            "hours": {str(w): round(ESTIMATE_IMAGES * per_image / (w * (efficiency if w > 1 else 1)) / 3600, 4)
                      for w in ESTIMATE_WORKERS}}


def _duration(hours: float) -> str:
    return f"{hours:.1f} h" if hours >= 1 else f"{60 * hours:.0f} min"


def estimated_costs(measured: dict[str, float]) -> dict[str, float]:
    """Seconds per image at 1 thread of PyTorch and of every registered artifact: measured where the job ran it,
    else its target's measured cost (one precision per target is measured)."""
    costs = {"pytorch_fp32": measured["pytorch_fp32"]}
    for target, cfg in TARGETS.items():
        ran = [v for name, v in measured.items() if name.startswith(f"{target}_")]
        if not ran:
            continue
        for precision in cfg.precisions:
            costs[f"{target}_{precision}"] = measured.get(f"{target}_{precision}", ran[0])
    return costs


def render(result: dict) -> str:
    m = result["meta"]
    cpu = m["cpu"]
    ext = ", ".join(f for f, on in cpu["int8_extensions"].items() if on) or "none"
    lines = [f"One accuracy job ({m['images']} photos, synthetic xx_small at 256x256, batch {m['batch']}; "
             f"{cpu['cpu']}, family {cpu['cpu_family']} model {cpu['cpu_model']}, {cpu['logical_cores']} cores, "
             f"int8 extensions: {ext}; {m['created']}): images/s per artifact in one process at 1 thread and on "
             "a Ray cluster on this machine (1 thread per worker). Speed-up: one-process time / this run's time.", "",
             "Steady: after the first batch (runtime loaded, workers started).", "",
             "| run | workers | artifact | images/s | speed-up | per worker | first batch after | steady images/s "
             "| steady speed-up |", "|---|---|---|---|---|---|---|---|---|"]
    for r in result["table"]:
        lines.append(f"| {r['run']} | {r['workers']} | {r['artifact']} | {r['images_per_s']:.1f} | "
                     f"{r['speedup']:.2f}x | {100 * r['efficiency']:.0f}% | {r['first_batch_s']:.1f} s | "
                     f"{r['steady_images_per_s']:.1f} | {r['steady_speedup']:.2f}x |")
    lines += ["", "Whole job (all rows; the Ray runs' time includes starting the workers, one pool for PyTorch's pass "
              "and one for the artifacts'). Engine overhead: 1 - speed-up / workers.", "",
              "| run | prediction time | speed-up | engine overhead | whole run (with cluster start and conversions) |",
              "|---|---|---|---|---|"]
    for name, t in result["totals"].items():
        overhead = t.get("overhead", 1 - t["speedup"] / t["workers"])
        lines.append(f"| {name} | {t['prediction_seconds']:.1f} s | {t['speedup']:.2f}x | {100 * overhead:.0f}% | "
                     f"{t['wall_seconds']:.1f} s |")
    est = result["estimate"]
    lines += ["", f"Estimate for {ESTIMATE_IMAGES:,} images x {len(est['artifacts'])} rows (PyTorch and every "
              f"registered artifact, each at its target's measured cost: {est['seconds_per_image_all']:.3f} s per "
              f"image at 1 thread, all rows together), at the "
              f"measured {100 * est['efficiency']:.0f}% per-worker efficiency ({est['efficiency_from']}): "
              + ", ".join(f"{w} worker{'s' if int(w) > 1 else ''}: {_duration(h)}"
                          for w, h in est["hours"].items()) + "."]
    return "\n".join(lines) + "\n"


def plot(result: dict, path: Path) -> None:
    """Images/s of the whole job (all rows) against workers, with the linear ideal from the one-process run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    totals = result["totals"]
    rows = len(result["one_process_seconds_per_image"])
    points = sorted((t["workers"], rows * result["images"] / t["prediction_seconds"], name)
                    for name, t in totals.items())
    base = rows * result["images"] / totals["local"]["prediction_seconds"]
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    most = max(w for w, _, _ in points)
    ax.plot([1, most], [base, base * most], ls="--", color="#999999", label="linear (one process x workers)")
    for w, ips, name in points:
        ax.scatter([w], [ips], color="#999999" if name == "local" else "#1f77b4", zorder=3)
        ax.annotate(f"{name}: {ips:.1f}", (w, ips), textcoords="offset points", xytext=(6, -10), fontsize=8)
    ax.set_xlabel("workers (1 thread each)")
    ax.set_ylabel("images/s, all rows together")
    ax.set_xticks(range(1, most + 1))
    ax.legend(fontsize=8, loc="upper left")
    ax.set_title(f"Accuracy job, {result['images']} photos x {rows} rows", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.scaling", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--limit", type=int, default=LIMIT, help=f"photos in the job (default {LIMIT})")
    p.add_argument("--targets", default=",".join(TARGETS), help="targets (default: all)")
    p.add_argument("--precisions", default="fp32", help="precisions (default fp32)")
    p.add_argument("--workers", default="1,2", help="Ray worker counts to run (default 1,2)")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--render", action="store_true", help="only re-render --out's scaling.md and .png from its JSON")
    a = p.parse_args(argv)
    if a.render:
        result = json.loads((a.out / "scaling.json").read_text())
        result.update(summarise(result["runs"], result["images"]))  # from the stored timings
        result["estimate"] = estimate(result)
        write_text(a.out / "scaling.json", json.dumps(result, indent=1) + "\n")
        return write(result, a.out)
    runs = measure(a.limit, a.targets.split(","), a.precisions.split(","), [int(w) for w in a.workers.split(",")],
                   a.batch)
    summary = summarise(runs, a.limit)
    result = {"meta": {**run_meta("python -m benchmarks.scaling", argv), "images": a.limit, "batch": a.batch,
                       "targets": a.targets, "precisions": a.precisions},
              **summary, "estimate": estimate(summary), "runs": runs}
    a.out.mkdir(parents=True, exist_ok=True)
    write_text(a.out / "scaling.json", json.dumps(result, indent=1) + "\n")  # the numbers first
    return write(result, a.out)


def write(result: dict, out: Path) -> int:
    """scaling.md and scaling.png from the numbers."""
    root = Path(__file__).resolve().parents[1]
    png = out.resolve() / "scaling.png"
    link = png.relative_to(root) if png.is_relative_to(root) else png  # as the README, at the repo root, sees it
    write_text(out / "scaling.md", render(result) + f"\n![images/s against workers]({link})\n")
    write_atomic(out / "scaling.png", lambda f: plot(result, f))
    print(render(result), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
