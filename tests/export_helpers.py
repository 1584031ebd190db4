"""Shared helpers for export tests: one export per configuration per session, however many pytest-xdist
workers the session has."""
from __future__ import annotations

import fcntl
import hashlib
import pickle
from pathlib import Path

from export.pipeline import ExportRequest, run_export

_CACHE: dict = {}
# Under pytest-xdist (conftest sets it): a folder every worker of the run sees. The first worker to ask for an
# export makes it there under a file lock; the others wait for it and read its results instead of converting again.
SHARED: Path | None = None
# The session's one TFLite xx_small export: its fp32 file is the same whatever else a request asks for
# (export.targets.tflite.onnx2tf_driver), so the tests that need only fp32 share it.
TFLITE_ALL = ("fp32", "fp16", "int8_dynamic", "int8")


def exported(tmp_root: Path, target: str, variant: str = "xx_small", precisions=(), **kw):
    """Run (once per session) an export and return its results, keyed by precision.

    A failed export is remembered too: every test that shares it fails with the export's own error, not
    with the "already exists" of a retry into the folder the first attempt partly published."""
    key = (target, variant, tuple(precisions), tuple(sorted(kw.items())))
    if key not in _CACHE:
        def run(out: Path):
            req = ExportRequest(target=target, variant=variant, precisions=tuple(precisions), out=out, **kw)
            try:
                return {r.manifest["precision"]: r for r in run_export(req)}
            except Exception as e:  # noqa: BLE001 -- re-raised below, for this test and every later one
                return e

        if SHARED is None:
            _CACHE[key] = run(tmp_root / f"{target}-{variant}-{len(_CACHE)}")
        else:
            _CACHE[key] = across_workers(repr(key), run)
    if isinstance(_CACHE[key], Exception):
        raise _CACHE[key]
    return _CACHE[key]


def across_workers(key: str, run):
    """``run(out)`` once for all workers of the run: under an exclusive lock on the key's own lock file, the
    first caller runs it and pickles what it returned (results or error); later callers unpickle that."""
    name = hashlib.sha256(key.encode()).hexdigest()[:16]
    SHARED.mkdir(parents=True, exist_ok=True)
    done = SHARED / f"{name}.pickle"
    with open(SHARED / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if done.exists():
            return pickle.loads(done.read_bytes())
        result = run(SHARED / name)
        try:
            pickle.loads(blob := pickle.dumps(result))
        except Exception:  # noqa: BLE001 -- an error type that does not survive pickling: keep its words
            result = RuntimeError(f"{type(result).__name__}: {result}")
            blob = pickle.dumps(result)
        done.write_bytes(blob)
        return result


# Layers of xx_small per kind, counted by hand from the architecture: 7 inverted residuals, 3 MobileViT
# blocks with 2, 4 and 3 transformer layers (9 attentions of 4 heads, 2 FFN linears each).
XXS_LAYER_COUNTS = {"stem": 1, "expand": 7, "depthwise": 7, "project": 7, "local3x3": 3, "conv_in": 3, "qkv": 9,
                    "attn_matmul": 9, "attn_out": 9, "ffn": 18, "conv_proj": 3, "fusion3x3": 3, "conv_exp": 1,
                    "classifier": 1}
XXS_HEADS = 4
