"""Per-op time of a ``.pte`` from ExecuTorch's own profiler (ETDump, read by the devtools Inspector), for
``benchmarks.profile``. XNNPACK reports each operator it runs inside its delegate ("Convolution (NHWC, QC8)
IGEMM #3"): the op type is the name without its instance number."""
from __future__ import annotations

import re
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np

from ...quiet import quiet

TOTALS = ("Method::execute", "DELEGATE_CALL")  # events that contain the others


def op_events(path: str | Path, x: np.ndarray, threads: int, runs: int) -> list[tuple[str, float]]:
    """``[(event name, ms per run)]`` in execution order: every event of one call of the program ("Convolution
    (NHWC, QC8) IGEMM #3", and the totals ``TOTALS``), over ``runs`` runs of ``x`` after one warm-up, on the
    process-wide pool sized to ``threads`` as the runner sizes it."""
    import torch
    from executorch.devtools import Inspector
    from executorch.extension.pybindings import portable_lib

    from .runner import ExecuTorchRunner

    feed = ExecuTorchRunner(path, threads).prepare(x)  # sizes the pool
    with quiet(stderr=True):
        module = portable_lib._load_for_executorch(str(path), enable_etdump=True, debug_buffer_size=0)
    for _ in range(runs + 1):
        module.forward([torch.as_tensor(feed)])
    with tempfile.TemporaryDirectory(prefix="etdump-") as tmp:
        dump = str(Path(tmp) / "run.etdp")
        module.write_etdump_result_to_file(dump)
        with quiet(stderr=True):
            inspector = Inspector(etdump_path=dump)
    out = []
    for block in inspector.event_blocks:
        if block.name != "Execute":
            continue
        for event in block.events:
            raw = list(event.perf_data.raw) if event.perf_data is not None else []
            if len(raw) == runs + 1:  # else an event of some runs only: not one per call
                out.append((event.name, float(np.sum(raw[1:])) / runs))  # the warm-up run dropped
    return out


def profile(path: str | Path, x: np.ndarray, threads: int, runs: int) -> dict:
    """``{"ops": {op type: {"ms": per run, "calls": per run}}, "source", "runs", "threads"}``: :func:`op_events`
    summed per op type (the event name without its instance number)."""
    ops: dict[str, dict] = defaultdict(lambda: {"ms": 0.0, "calls": 0})
    for name, ms in op_events(path, x, threads, runs):
        name = re.sub(r" #\d+$", "", name)
        ops[name]["ms"] += ms
        ops[name]["calls"] += 1
    totals = {k: ops.pop(k)["ms"] for k in TOTALS if k in ops}
    from executorch.version import __version__

    return {"ops": dict(ops), "source": f"ExecuTorch {__version__} ETDump (XNNPACK operator events)",
            "runs": runs, "threads": threads, "total_ms": totals.get("Method::execute")}
