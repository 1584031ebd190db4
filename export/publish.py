"""Publishing: the manifest, and an atomic move of a validated artifact into its folder.

The artifact, its labels and its manifest are assembled in a hidden temporary folder beside the
destination, which then becomes the destination in one rename. An interrupted or failed export
leaves nothing at the destination (the temporary folder is removed; a crash leaves only a
``.partial-*`` folder that a later run cleans up).
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import time
from pathlib import Path

from mobilevit.atomic import staged_folder

from .config import int8_recipe, target_config
from .errors import OutputError

__all__ = ["OutputError", "check_destination", "sha256_path", "tool_versions", "write_json",
           "manifest", "publish"]


# What the manifest says about getting this artifact_sha256 again (tests/test_reproducible.py checks the first part).
REPRODUCIBILITY = {
    "same_machine": "the same request (target, precisions, options, weights, photos) gives byte-identical "
                    "artifacts for Core ML, ONNX and TFLite",
    "may_differ": ["tool_versions and machine above: other converter versions, or CPU kernels whose float "
                   "rounding differs, change calibrated int8 ranges and converter constant folding",
                   "TFLite: asking for int8/int8_dynamic in the same request changes onnx2tf's flags and so the "
                   "bytes of the fp32/fp16 files"],
}


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
                "tensorflow", "ai-edge-litert", "executorch", "torchao", "numpy"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")


INT8_SEARCH_SIDECAR = ".int8search.json"  # beside a freshly converted artifact: its int8 search's record


def write_int8_search(artifact: Path, record: dict) -> Path:
    """A converter's int8 search record, beside its artifact, for the manifest (:func:`read_int8_search`)."""
    path = Path(str(artifact) + INT8_SEARCH_SIDECAR)
    path.write_text(json.dumps(record, indent=1))
    return path


def read_int8_search(artifact: Path) -> dict | None:
    """The record :func:`write_int8_search` left beside ``artifact`` (removed: it lives on in the manifest)."""
    path = Path(str(artifact) + INT8_SEARCH_SIDECAR)
    if not path.exists():
        return None
    record = json.loads(path.read_text())
    path.unlink()
    return record


def manifest(artifact: Path, *, target: str, precision: str, model, weights: dict, options: dict,
             preprocessing: dict, sizes: tuple[int, ...], graph: dict, validation: dict, seconds: float,
             task: str = "classification", output: str | None = None, int8_search: dict | None = None) -> dict:
    """Everything a user (or a later audit) needs to know about one published artifact."""
    return {
        "artifact": artifact.name,
        "artifact_sha256": sha256_path(artifact),
        "target": target,
        "precision": precision,
        "task": task,
        **({"output_kind": output} if output else {}),
        "variant": model.cfg.name,
        "num_classes": model.cfg.num_classes,
        "weights": weights,
        "patch_strategy": model.patches.name,
        "attention_layout": model.attention_layout,
        "rewrites": list(target_config(target).rewrites),  # applied to a copy before conversion
        "options": options,
        **_int8(target, precision, options, int8_search),
        "input": {**graph["inputs"][0], "sizes": list(sizes), **preprocessing},
        "output": graph["outputs"],
        "graph": graph,
        **({"delegation": graph["delegation"]} if graph.get("delegation") else {}),
        "validation": validation,
        "tool_versions": tool_versions(),
        "machine": {"system": platform.system(), "machine": platform.machine(),
                    "python": platform.python_version()},
        "reproducibility": REPRODUCIBILITY,
        "export_seconds": round(seconds, 2),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def _int8(target: str, precision: str, options: dict, searched: dict | None = None) -> dict:
    """The int8 recipe the artifact was made with: which layer kinds stayed float, how it was calibrated; or,
    searched for this checkpoint (``--int8-budget``), the layers chosen and the figures of the search."""
    recipe = int8_recipe(target, precision)
    if recipe is None:
        return {}
    if searched is not None:
        return {"int8_recipe": {"float_layers": searched["float_layers"], "calibration": recipe.calibration,
                                "source": f"search ({searched['budget']})"}, "int8_search": searched}
    from mobilevit.layers import KINDS

    from .int8 import float_kinds

    kept = float_kinds(target, precision, options.get("float_kinds"))
    return {"int8_recipe": {"float_kinds": list(kept), "int8_kinds": [k for k in KINDS if k not in kept],
                            "calibration": recipe.calibration,
                            "source": "recipe" if options.get("float_kinds") is None else "--float-kinds"}}


def publish(artifact: Path, dest: Path, manifest: dict, labels: list[str], force: bool = False) -> Path:
    """Move ``artifact`` with ``labels.txt`` and ``manifest.json`` into ``dest`` atomically; the final path."""
    check_destination(dest, force)
    with staged_folder(dest) as tmp:
        shutil.move(str(artifact), tmp / artifact.name)
        (tmp / "labels.txt").write_text("\n".join(labels) + "\n")
        write_json(tmp / "manifest.json", manifest)
    return dest / artifact.name
