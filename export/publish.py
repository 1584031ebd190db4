"""Atomic publishing: build in a hidden temporary folder beside the destination, validate, rename.

An interrupted or failed export leaves nothing at the destination (the temporary folder is
removed; a crash leaves only a ``.partial-*`` folder that a later run cleans up).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path


class OutputError(RuntimeError):
    """The destination cannot be written (exists, unwritable, not a folder)."""


def check_destination(dest: Path, force: bool) -> None:
    """Refuse an existing destination (unless ``force``) or an unwritable parent, before any work."""
    parent = dest.parent
    if parent.exists() and not parent.is_dir():
        raise OutputError(f"output folder {parent} is a file, not a folder: choose another --out")
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputError(f"cannot create output folder {parent} ({e.strerror}): choose another --out") from e
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"output folder {parent} is not writable: choose another --out")
    if dest.exists() and not force:
        raise OutputError(f"{dest} already exists: pass --force to replace it, or choose another --out")


@contextlib.contextmanager
def staging(dest: Path, force: bool = False):
    """Yield a temporary folder; on success it becomes ``dest`` in one rename, else it vanishes."""
    check_destination(dest, force)
    for stale in dest.parent.glob(f".partial-{dest.name}-*"):
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".partial-{dest.name}-", dir=dest.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if dest.exists():
        old = dest.parent / f".old-{dest.name}-{os.getpid()}"
        os.rename(dest, old)
    os.rename(tmp, dest)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def sha256_path(path: str | Path) -> str:
    """sha256 of a file, or of a folder's files (relative names and contents, sorted)."""
    path = Path(path)
    h = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for f in files:
        if path.is_dir():
            h.update(str(f.relative_to(path)).encode())
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def tool_versions() -> dict[str, str]:
    """Versions of everything that touched the artifact."""
    from importlib import metadata

    out = {}
    for pkg in ("torch", "coremltools", "onnx", "onnxscript", "onnxruntime", "onnxsim", "onnx2tf",
                "tensorflow", "ai-edge-litert", "numpy"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")
