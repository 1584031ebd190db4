"""Reading checkpoint files of every public format safely, and saving ours.

Reading never unpickles arbitrary code: safetensors, or ``torch.load(..., weights_only=True)`` (plus numpy
arrays/scalars/dtypes, which some training tools leave in the metadata). Saving goes through the one atomic
writer (:mod:`mobilevit.atomic`). Every problem raises a :class:`.errors.CheckpointError` subclass whose
message names the problem and the fix.
"""
from __future__ import annotations

import hashlib
import json
import pickle
import zipfile
from pathlib import Path

import torch

from ..atomic import write_atomic
from .errors import (
    CheckpointNotFoundError,
    CheckpointWriteError,
    CorruptWeightsError,
    NotACheckpointError,
    TruncatedCheckpointError,
    UnsafeCheckpointError,
    cap,
)

OUR_FORMAT = "mobilevit-export"
OUR_FORMAT_VERSION = 1
MAX_ABS_WEIGHT = 1e6  # no trained MobileViT tensor comes near this (BatchNorm variances stay below ~1e3)


# ----------------------------------------------------------------------------------- reading
def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _numpy_globals() -> list:
    """numpy arrays, scalars and dtypes: plain data some tools leave in checkpoint metadata."""
    import numpy as np

    if int(np.__version__.split(".")[0]) >= 2:
        from numpy._core import multiarray
    else:
        from numpy.core import multiarray
    dtype_classes = {type(np.dtype(code)) for code in np.typecodes["All"]}  # e.g. numpy.dtypes.Float32DType
    return [multiarray._reconstruct, multiarray.scalar, np.ndarray, np.dtype, *dtype_classes]


def _unsafe_globals(path: Path) -> str:
    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
    except Exception:  # not a torch.save zip (e.g. a raw pickle): no list to give
        return ""
    names = sorted(names, key=lambda n: (n.startswith("torch."), n))  # the file's own classes first
    return f" (it references {cap(names)})" if names else ""


def _torch_load(path: Path) -> object:
    with open(path, "rb") as f:
        head = f.read(4)
    if not (head.startswith(b"PK") or head.startswith(b"\x80")):  # zip (torch >= 1.6) or a legacy pickle
        raise NotACheckpointError(
            f"{path} is not a checkpoint (neither a PyTorch file nor safetensors): pass a .pth/.pt/.bin or "
            ".safetensors file")
    try:
        try:
            return torch.load(str(path), map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:
            if "Weights only load failed" not in str(e):
                raise
            with torch.serialization.safe_globals(_numpy_globals()):
                return torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "Weights only load failed" in str(e):
            raise UnsafeCheckpointError(
                f"{path} needs arbitrary code to unpickle{_unsafe_globals(path)}, "
                "which is refused for safety. "
                "If you trust its source, re-save just its tensors: torch.save(torch.load(path, "
                "weights_only=False)['state_dict'] (or the model's .state_dict()), new_path), or convert it "
                "to safetensors") from e
        raise TruncatedCheckpointError(
            f"{path} cannot be unpickled ({e}); it is probably truncated or corrupt: "
            "download it again") from e
    except (RuntimeError, zipfile.BadZipFile, EOFError, OSError, ValueError) as e:
        raise TruncatedCheckpointError(
            f"{path} looks like a PyTorch checkpoint but cannot be read ({str(e).splitlines()[0]}); it is "
            "probably truncated or corrupt: download it again") from e


def _is_safetensors(path: Path) -> bool:
    """safetensors starts with an 8-byte little-endian header length and a JSON header ``{``."""
    with open(path, "rb") as f:
        head = f.read(9)
    if len(head) == 9 and head[8:9] == b"{":
        return int.from_bytes(head[:8], "little") < path.stat().st_size
    return path.suffix == ".safetensors"  # too short to tell: let safetensors name the problem


def resolve_path(path: str | Path) -> Path:
    """The checkpoint file itself; a folder stands for its ``model.safetensors`` / ``pytorch_model.bin``."""
    path = Path(path)
    if not path.exists():
        raise CheckpointNotFoundError(f"checkpoint {path} does not exist: check the path given to --weights")
    if path.is_dir():
        for name in ("model.safetensors", "pytorch_model.bin"):
            if (path / name).is_file():
                return path / name
        raise NotACheckpointError(f"{path} is a folder without model.safetensors or pytorch_model.bin: "
                                  "pass the checkpoint file itself")
    return path


def read_file(path: str | Path) -> object:
    """Load tensors without running code: safetensors, or ``torch.load(weights_only=True)``.

    A folder is read through its ``model.safetensors`` or ``pytorch_model.bin`` (Hugging Face layout).
    """
    path = resolve_path(path)
    if _is_safetensors(path):
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as e:
            raise TruncatedCheckpointError(
                f"{path} is not a readable safetensors file ({e}); it is probably truncated or corrupt: "
                "download it again") from e
    return _torch_load(path)


def unwrap(obj, path: Path) -> dict[str, torch.Tensor]:
    """The tensor dict inside common wrappers (``state_dict``, ``model``, DDP ``module.`` prefix)."""
    if isinstance(obj, dict):
        for key in ("state_dict", "model", "model_state_dict"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not obj:
        raise NotACheckpointError(
            f"{path} holds no state dict (a mapping of parameter names to tensors) but a "
            f"{type(obj).__name__}: save model.state_dict(), not the model or a list")
    others = [str(k) for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if others:
        raise NotACheckpointError(
            f"{path} holds no state dict: besides tensors it has {cap(others)}; expected a mapping of "
            "parameter names to tensors, possibly under 'state_dict' or 'model'")
    if all(k.startswith("module.") for k in obj):
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return obj


def huggingface_config(path: Path) -> dict:
    """The ``config.json`` beside a Hugging Face checkpoint file; empty when there is none readable."""
    try:
        config = json.loads((path.parent / "config.json").read_text())
    except (OSError, ValueError):
        return {}
    return config if isinstance(config, dict) else {}


def huggingface_class_names(config: dict, num_classes: int) -> list[str] | None:
    """``id2label`` from a Hugging Face ``config.json``, unless it is absent or the placeholder ``LABEL_i``
    names transformers writes when none were given."""
    try:
        id2label = config.get("id2label") or {}
        names = [str(id2label[str(i)]) for i in range(num_classes)]
    except (KeyError, AttributeError, TypeError):  # no id2label, or not a mapping
        return None
    if names == [f"LABEL_{i}" for i in range(num_classes)]:
        return None
    seen = {n: names.count(n) for n in names}  # ImageNet's id2label has "crane" twice: keep labels unique
    return [n if seen[n] == 1 else f"{n} ({i})" for i, n in enumerate(names)]


def check_finite(sd: dict[str, torch.Tensor], where: str) -> None:
    """Refuse the first floating-point tensor (in file order) that holds NaN/Inf or absurd values."""
    for key, t in sd.items():
        if not t.is_floating_point() or t.numel() == 0:
            continue
        finite = torch.isfinite(t)
        if not bool(finite.all()):
            bad = int((~finite).sum())
            raise CorruptWeightsError(
                f"{where}: tensor {key} holds {bad} NaN/Inf value(s) of {t.numel()}; these weights come from a "
                "diverged training run or a damaged file: use an earlier checkpoint or download it again")
        peak = float(t.abs().max())
        if peak > MAX_ABS_WEIGHT:
            raise CorruptWeightsError(
                f"{where}: tensor {key} holds a value of magnitude {peak:.3g} (more than {MAX_ABS_WEIGHT:.0e}, far "
                "beyond any trained MobileViT); the file is damaged or not these weights: download it again")


# ------------------------------------------------------------------------------- our format
_PLAIN = (type(None), bool, int, float, str, torch.Tensor)


def _check_plain(value, where: str = "extra") -> None:
    """Refuse metadata that ``weights_only`` loading could not read back (e.g. Path, numpy, objects)."""
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, (str, int)):
                raise TypeError(f"{where} has a key of type {type(k).__name__}; use str keys")
            _check_plain(v, f"{where}[{k!r}]")
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _check_plain(v, f"{where}[{i}]")
    elif not isinstance(value, _PLAIN):
        raise TypeError(f"{where} is a {type(value).__name__}, which a safe (weights_only) load cannot read: "
                        "store str/int/float/bool/None, lists, dicts or tensors")


def save_checkpoint(model, path: str | Path, *, class_names: list[str] | None = None, origin: str = "",
                    extra: dict | None = None) -> Path:
    """Write ``model`` (a classifier or a segmentation model) in our format, atomically and with the ordinary
    permissions of the umask: either the complete new file is at ``path`` afterwards, or whatever was there
    before is untouched and no temporary file remains (:class:`CheckpointWriteError`).
    """
    path = Path(path)
    cfg = model.cfg
    if getattr(model, "features_only", False):
        raise ValueError("save_checkpoint needs a classifier; this model was built with features_only=True")
    if class_names is not None and len(class_names) != cfg.num_classes:
        raise ValueError(f"{len(class_names)} class names for a {cfg.num_classes}-class head")
    _check_plain(extra or {})
    names = [str(c) for c in class_names] if class_names is not None else None
    payload = {"format": OUR_FORMAT, "format_version": OUR_FORMAT_VERSION, "variant": cfg.name,
               "num_classes": cfg.num_classes, "class_names": names,
               "origin": str(origin), "extra": dict(extra or {}),
               "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()}}
    try:
        write_atomic(path, lambda f: torch.save(payload, f))
    except OSError as e:
        raise CheckpointWriteError(
            f"could not write {path} ({e}); nothing was written there: check that the folder is writable "
            "and has free space") from e
    return path
