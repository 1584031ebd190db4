"""``python -m benchmarks.profile ARTIFACT...``: where the time of each artifact goes, per op type, from each
runtime's own profiler at 1 thread (onnxruntime session profiling; ExecuTorch ETDump with XNNPACK's operator
events). fp32 and int8 artifacts of one target side by side, with the share of time in GEMM-like ops
(convolutions, matmuls, fully connected layers) and in the rest (softmax, normalisation, activations,
quantize/dequantize, layout moves): int8 pays off only in the first share.

Artifacts are exported ones (``python -m export ... --out DIR``; their ``manifest.json`` gives the variant and
size). A target whose runtime has no per-op profiler we can call (LiteRT's Python interpreter, the Core ML
reference executor) is listed with that reason. For int8 artifacts of a runtime with a chain check
(onnxruntime: its optimized graph), the float islands between int8 kernels and the ops that broke each chain.
Results: ``--out``'s ``STEM.{json,md}`` (default ``benchmarks/results/profile``), with the CPU and its int8
extensions.
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from export.config import load, target_for_path

from .harness import EXIT_BAD_INPUT, BenchmarkInputError, artifact_manifest, artifact_photos, run_meta, write_result

RESULTS = Path(__file__).parent / "results"
# op types whose work is a GEMM (dense or depthwise convolution, matmul, fully connected); the rest is overhead
GEMM_LIKE = re.compile(r"conv(?!ert)|matmul|gemm|fully connected|matrix multiply", re.IGNORECASE)
TOP_OPS = 12  # op types listed per target in the markdown (the JSON has them all)


def gemm_like(op: str) -> bool:
    return bool(GEMM_LIKE.search(op))


def profile_artifact(path: str | Path, threads: int = 1, runs: int = 20) -> dict:
    """One artifact's per-op-type times (see the module docstring)."""
    path = Path(path)
    if not path.exists():
        raise BenchmarkInputError(f"{path} does not exist: give an exported artifact (.onnx, .pte, ...)")
    try:
        cfg = target_for_path(path)
    except ValueError as e:
        raise BenchmarkInputError(str(e)) from e
    manifest = artifact_manifest(path)
    row = {"artifact": path.name, "target": cfg.name, "precision": manifest.get("precision"),
           "variant": manifest.get("variant"), "size": int(manifest["input"]["shape"][-1])}
    if not cfg.profiler:
        return row | {"error": f"{cfg.name}: its runtime has no per-op profiler this command can call"}
    if cfg.int8_chains:
        chains = load(cfg.int8_chains)(path)
        if chains.integer_ops:
            row["int8_chains"] = {"islands": len(chains.islands), "breaks": chains.breaks,
                                  "dequantize_into_islands": sum(i.entries for i in chains.islands),
                                  "quantize_out_of_islands": sum(i.exits for i in chains.islands),
                                  "integer_ops": chains.integer_ops, "summary": chains.describe()}
    result = load(cfg.profiler)(path, artifact_photos(manifest, 1), threads, runs)
    ops = result["ops"]
    total = sum(v["ms"] for v in ops.values())
    gemm = sum(v["ms"] for k, v in ops.items() if gemm_like(k))
    return row | {"source": result["source"], "threads": threads, "runs": runs, "ops_ms": round(total, 6),
                  "run_ms": result.get("total_ms"), "gemm_ms": round(gemm, 6),
                  "gemm_share": round(gemm / total, 4) if total else 0.0,
                  "ops": {k: {"ms": round(v["ms"], 6), "calls": v["calls"], "gemm_like": gemm_like(k)}
                          for k, v in sorted(ops.items(), key=lambda kv: -kv[1]["ms"])}}


def render(result: dict) -> str:
    cpu = result["meta"]["cpu"]
    ext = ", ".join(f for f, on in cpu["int8_extensions"].items() if on) or "none"
    lines = [f"Per-op-type time at {result['meta']['threads']} thread(s), mean of {result['meta']['runs']} runs "
             f"after a warm-up, from each runtime's own profiler ({cpu['cpu']}, family {cpu['cpu_family']} model "
             f"{cpu['cpu_model']}, int8 extensions: {ext}; {result['meta']['created']}). GEMM-like: convolutions, "
             "matmuls, fully connected layers; the rest is softmax, normalisation, activations, quantize/dequantize "
             "and layout moves.", ""]
    rows = result["artifacts"]
    lines += ["| artifact | profiler | run (ms) | in ops (ms) | GEMM-like (ms) | GEMM-like share | rest (ms) |",
              "|---|---|---|---|---|---|---|"]
    for r in rows:
        if r.get("error"):
            lines.append(f"| {r['artifact']} | {r['error']} | | | | | |")
            continue
        run = f"{r['run_ms']:.2f}" if r.get("run_ms") else "-"
        lines.append(f"| {r['artifact']} | {r['source']} | {run} | {r['ops_ms']:.2f} | {r['gemm_ms']:.2f} | "
                     f"{100 * r['gemm_share']:.0f}% | {r['ops_ms'] - r['gemm_ms']:.2f} |")
    chains = [r for r in rows if r.get("int8_chains")]
    if chains:
        lines += ["", "Integer chains in the graph the runtime runs (float islands between int8 kernels):", ""]
        lines += [f"- {r['artifact']}: {r['int8_chains']['summary']}" for r in chains]
    by_target: dict[str, list[dict]] = {}
    for r in rows:
        if not r.get("error"):
            by_target.setdefault(f"{r['target']} {r['variant']}", []).append(r)
    for name, group in by_target.items():
        ops = sorted({op for r in group for op in r["ops"]},
                     key=lambda op: -max(r["ops"].get(op, {"ms": 0})["ms"] for r in group))
        lines += ["", f"{name}: ms per run by op type (calls per run), the {TOP_OPS} largest", "",
                  "| op type | GEMM-like | " + " | ".join(r["precision"] for r in group) + " |",
                  "|---|---|" + "---|" * len(group)]
        for op in ops[:TOP_OPS]:
            cells = [f"{r['ops'][op]['ms']:.2f} ({r['ops'][op]['calls']})" if op in r["ops"] else "-" for r in group]
            lines.append(f"| {op} | {'yes' if gemm_like(op) else ''} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.profile", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("artifacts", nargs="+", help="exported artifacts (.onnx, .pte, ...) in their export folders")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--runs", type=int, default=20)
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--stem", default="profile", help="result file names: STEM.{json,md} in --out")
    a = p.parse_args(argv)
    if a.threads < 1 or a.runs < 1:
        print(f"error: --threads {a.threads} --runs {a.runs}: give at least 1 of each", file=sys.stderr)
        return EXIT_BAD_INPUT
    try:
        rows = [profile_artifact(path, a.threads, a.runs) for path in a.artifacts]
    except BenchmarkInputError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    result = {"meta": {**run_meta("python -m benchmarks.profile", argv), "threads": a.threads, "runs": a.runs},
              "artifacts": rows}
    write_result(a.out, a.stem, result, render(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
