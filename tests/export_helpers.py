"""Shared helpers for export tests: one export per configuration per session."""
from __future__ import annotations

from pathlib import Path

from export.pipeline import ExportRequest, run_export

_CACHE: dict = {}


def exported(tmp_root: Path, target: str, variant: str = "xx_small", precisions=(), **kw):
    """Run (once per session) an export and return its results, keyed by precision."""
    key = (target, variant, tuple(precisions), tuple(sorted(kw.items())))
    if key not in _CACHE:
        out = tmp_root / f"{target}-{variant}-{len(_CACHE)}"
        req = ExportRequest(target=target, variant=variant, precisions=tuple(precisions), out=out, **kw)
        _CACHE[key] = {r.manifest["precision"]: r for r in run_export(req)}
    return _CACHE[key]
