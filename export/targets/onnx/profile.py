"""Per-op time of an ONNX artifact from onnxruntime's own session profiler (``benchmarks.profile``)."""
from __future__ import annotations

import json
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np


def profile(path: str | Path, x: np.ndarray, threads: int, runs: int) -> dict:
    """``{"ops": {op type: {"ms": per run, "calls": per run}}, "nodes": {node name: ms per run}, "source",
    "runs", "threads", "total_ms"}`` over ``runs``
    runs of ``x`` after one warm-up, the session built as the benchmarks build it (``OnnxRuntimeRunner``'s
    options) with profiling on. The op types are the *optimized* graph's, the kernels that ran (FusedMatMul,
    QLinearConv, ...)."""
    import onnxruntime as ort

    from .runner import OnnxRuntimeRunner

    feed = OnnxRuntimeRunner(path, threads).prepare(x)
    with tempfile.TemporaryDirectory(prefix="ortprof-") as tmp:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.enable_profiling, opts.profile_file_prefix = True, str(Path(tmp) / "profile")
        session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        for _ in range(runs + 1):
            session.run(None, feed)
        events = json.loads(Path(session.end_profiling()).read_text())
    kernels = [(e["args"]["op_name"], e["name"].removesuffix("_kernel_time"), float(e["dur"])) for e in events
               if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time")]
    per_run = len(kernels) // (runs + 1)  # every run runs the same kernels; the first (warm-up) is dropped
    ops: dict[str, dict] = defaultdict(lambda: {"ms": 0.0, "calls": 0})
    nodes: dict[str, float] = defaultdict(float)
    for op, node, us in kernels[per_run:]:
        ops[op]["ms"] += us / 1000 / runs
        ops[op]["calls"] += 1
        nodes[node] += us / 1000 / runs
    for v in ops.values():
        v["calls"] //= runs
    whole = [float(e["dur"]) for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"]
    return {"ops": dict(ops), "nodes": dict(nodes),
            "source": f"onnxruntime {ort.__version__} session profiling (kernel time)", "runs": runs,
            "threads": threads, "total_ms": sum(whole[1:]) / 1000 / runs if len(whole) > runs else None}
