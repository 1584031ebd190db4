"""Measure every patch strategy through every converter: graph size, drift, latency.

This is where the exporters' default strategies come from (``export.config.TARGETS``):
``python -m benchmarks.strategies --variants xx_small,small`` writes
``benchmarks/results/strategies.json`` and ``strategies.md`` (the README table).
Runtimes run in shuffled, interleaved rounds (``harness.measure_latency``) so machine load hits
every strategy alike; each median carries its bootstrap 95% interval.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from mobilevit.atomic import write_text

RESULTS = Path(__file__).parent / "results"


def _convert(target: str, model, folder: Path, calib: np.ndarray) -> Path:
    from export import convert, target_config

    return convert(model, target, "fp32", folder, calibration=calib, **target_config(target).logits_options)


def measure(variants, targets, strategies, repeats: int, threads: int, out: Path) -> list[dict]:
    from data.photos import sample_batch
    from data.synthetic import synthetic_model
    from export.graph import inspect
    from export.runners import RunnerUnavailable, make_runner
    from export.validate import drift

    torch.set_num_threads(threads)
    rows, runners = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for variant in variants:
            model = synthetic_model(variant)
            x = sample_batch(model.cfg, 8, seed=1).numpy()
            calib = sample_batch(model.cfg, 16, seed=7).numpy()
            with torch.no_grad():
                ref = model(torch.from_numpy(x)).numpy()
            for target in targets:
                for strategy in strategies:
                    row = {"variant": variant, "target": target, "strategy": strategy}
                    rows.append(row)
                    folder = Path(tmp) / f"{variant}-{target}-{strategy}"
                    folder.mkdir()
                    print(f"[strategies] {variant} {target} {strategy} ...", file=sys.stderr, flush=True)
                    start = time.time()
                    try:
                        path = _convert(target, model.set_patches(strategy), folder, calib)
                    except Exception as e:
                        last = str(e).splitlines()[-1][:200]
                        row["error"] = f"conversion failed: {type(e).__name__}: {last}"
                        continue
                    finally:
                        model.set_patches("reference")
                    row["convert_s"] = round(time.time() - start, 1)
                    g = inspect(path)
                    row.update(nodes=g.nodes, transposes=g.transposes, max_rank=g.max_rank,
                               shape_ops=sum(g.shape_ops.values()))
                    try:
                        runner = make_runner(path, threads=threads)
                        row["max_abs_diff"] = drift(ref, runner(x)).max_abs
                        row["runtime"] = runner.runtime
                        if runner.timeable:
                            runners[len(rows) - 1] = (runner, [])
                        else:
                            row["latency"] = (f"skipped: {runner.runtime} is a reference executor "
                                              "(diff from it; timing needs the target's own runtime)")
                    except RunnerUnavailable as e:
                        row["max_abs_diff"] = None
                        row["latency"] = f"skipped: {e}"
        from .harness import Entry, measure_latency

        entries = [Entry(str(idx), runner.runtime, rows[idx]["target"], "fp32", "ours", rows[idx]["strategy"],
                         "batched", lambda threads, runner=runner: runner, runner.version)
                   for idx, (runner, _) in runners.items()]
        measure_latency(entries, [threads], repeats, warmup=5, x=x[:1])  # interleaved blocks, same load
        for e in entries:
            lat = e.results["latency"][str(threads)]
            rows[int(e.name)].update(latency_ms_median=round(lat["median_ms"], 3),
                                     latency_ms_iqr=round(lat["iqr_ms"], 3),
                                     latency_ms_ci95=[round(lat["ci95_low_ms"], 3), round(lat["ci95_high_ms"], 3)],
                                     runtime_version=e.version)
    out.mkdir(parents=True, exist_ok=True)
    meta = {"command": " ".join(["python -m benchmarks.strategies", *sys.argv[1:]]), "threads": threads,
            "repeats": repeats, "machine": platform.processor() or platform.machine(),
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "weights": "synthetic-calibrated"}
    write_text(out / "strategies.json", json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    write_text(out / "strategies.md", render(rows, meta))
    return rows


def render(rows: list[dict], meta: dict) -> str:
    """Markdown: one table per target, variants and strategies as rows."""
    lines = [f"Patch strategies, calibrated synthetic weights, batch 1, {meta['threads']} threads, "
             f"median [bootstrap 95% CI] of {meta['repeats']} runs in shuffled interleaved rounds "
             f"({meta['created']}; `{meta.get('command', 'python -m benchmarks.strategies')}`).", ""]
    for target in dict.fromkeys(r["target"] for r in rows):
        lines += [f"**{target}**", "", "| variant | strategy | nodes | transposes | max rank | "
                  "max abs diff | latency ms [95% CI] |", "|---|---|---|---|---|---|---|"]
        for r in (r for r in rows if r["target"] == target):
            if "error" in r:
                lines.append(f"| {r['variant']} | {r['strategy']} | {r['error']} | | | | |")
                continue
            diff = "n/a" if r.get("max_abs_diff") is None else f"{r['max_abs_diff']:.2e}"
            lat = (f"{r['latency_ms_median']:.2f} [{r['latency_ms_ci95'][0]:.2f}, {r['latency_ms_ci95'][1]:.2f}]"
                   if "latency_ms_median" in r
                   else r.get("latency", "n/a"))
            lines.append(f"| {r['variant']} | {r['strategy']} | {r['nodes']} | {r['transposes']} | "
                         f"{r['max_rank']} | {diff} | {lat} |")
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> int:
    from mobilevit import STRATEGIES

    p = argparse.ArgumentParser(prog="python -m benchmarks.strategies", description=__doc__)
    p.add_argument("--variants", default="xx_small,small")
    p.add_argument("--targets", default="onnx,tflite,coreml")
    p.add_argument("--strategies", default=",".join(STRATEGIES))
    p.add_argument("--repeats", type=int, default=50)
    p.add_argument("--threads", type=int, default=1, help="1 is the stable figure on a shared 2-core machine")
    p.add_argument("--out", type=Path, default=RESULTS)
    a = p.parse_args(argv)
    rows = measure(a.variants.split(","), a.targets.split(","), a.strategies.split(","), a.repeats, a.threads,
                   a.out)
    print(render(rows, json.loads((a.out / "strategies.json").read_text())["meta"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
