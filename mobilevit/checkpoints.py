"""Import the public MobileViT checkpoints (mmpretrain, Apple ml-cvnets, timm, Hugging Face) and ours.

Each public format is described by a *layout*: a pure function from a config to the list of
``(our module, their module, kind)`` triples. :func:`remap` turns that into a pure state-dict
-> state-dict function, returning early when the keys are already ours. Format and variant are
detected from keys and shapes, never from file names.

Loading never unpickles arbitrary code: ``torch.load(..., weights_only=True)`` or safetensors.
Every problem raises a :class:`CheckpointError` subclass whose message names the problem and
the fix.
"""
from __future__ import annotations

import hashlib
import os
import pickle
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from .config import VARIANTS, MobileViTConfig, StageKind, get_config

OUR_FORMAT = "mobilevit-export"
OUR_FORMAT_VERSION = 1
BN_PARAMS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


# ------------------------------------------------------------------------------------- errors
class CheckpointError(ValueError):
    """Base class: a checkpoint that cannot be imported."""


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    pass


class NotACheckpointError(CheckpointError):
    pass


class TruncatedCheckpointError(CheckpointError):
    pass


class UnsafeCheckpointError(CheckpointError):
    pass


class UnknownFormatError(CheckpointError):
    pass


class KeyMismatchError(CheckpointError):
    pass


class ShapeMismatchError(CheckpointError):
    pass


class VariantMismatchError(CheckpointError):
    pass


# ------------------------------------------------------------------------------------ layouts
# Kinds of unit: "convbn" (conv weight + BatchNorm), "conv" (weight only), "ln" / "linear" (weight +
# bias); a ("qkv3", q, k, v) target fuses three Linears into our qkv.


def _our_units(cfg: MobileViTConfig):
    """Yield (our module, role) in a fixed order; roles let each format name its module."""
    yield "stem", ("stem",)
    for i, stage in enumerate(cfg.stages):
        irs = stage.num_blocks if stage.kind is StageKind.MV2 else 1
        for j in range(irs):
            expand = stage.expand_ratio != 1
            for part in (("expand",) if expand else ()) + ("dw", "project"):
                yield f"stages.{i}.{j}.{part}", ("ir", i, j, part, expand)
        if stage.kind is StageKind.VIT:
            b = f"stages.{i}.1"
            yield f"{b}.conv_local", ("vit", i, "conv_local")
            yield f"{b}.conv_in", ("vit", i, "conv_in")
            for k in range(stage.num_layers):
                for part in ("norm1", "attn.qkv", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2"):
                    yield f"{b}.transformer.{k}.{part}", ("tf", i, k, part)
            yield f"{b}.norm", ("vit", i, "norm")
            yield f"{b}.conv_proj", ("vit", i, "conv_proj")
            yield f"{b}.conv_fusion", ("vit", i, "conv_fusion")
    yield "conv_exp", ("exp",)
    yield "head", ("head",)


def _kind(our: str) -> str:
    last = our.rsplit(".", 1)[-1]
    if last in ("norm1", "norm2", "norm"):
        return "ln"
    if last in ("qkv", "proj", "fc1", "fc2", "head") or our == "head":
        return "linear"
    if last == "conv_in":
        return "conv"
    return "convbn"


def _mmpretrain(role) -> str | tuple:
    """open-mmlab/mmpretrain mobilevit.py: ConvModule(conv, bn), InvertedResidual.conv[k],
    TransformerEncoderLayer(ln1, attn.qkv, attn.proj, ln2, ffn.layers.0.0, ffn.layers.1)."""
    match role:
        case ("stem",):
            return "backbone.stem"
        case ("ir", i, j, part, expand):
            k = {"expand": 0, "dw": 1 if expand else 0, "project": 2 if expand else 1}[part]
            return f"backbone.layers.{i}.{j}.conv.{k}"
        case ("vit", i, name):
            base = f"backbone.layers.{i}.1"
            return {"conv_local": f"{base}.local_rep.0", "conv_in": f"{base}.local_rep.1.conv",
                    "norm": ("final_ln", f"{base}.global_rep"), "conv_proj": f"{base}.conv_proj",
                    "conv_fusion": f"{base}.conv_fusion"}[name]
        case ("tf", i, k, part):
            base = f"backbone.layers.{i}.1.global_rep.{k}"
            return f"{base}." + {"norm1": "ln1", "attn.qkv": "attn.qkv", "attn.proj": "attn.proj", "norm2": "ln2",
                                 "mlp.fc1": "ffn.layers.0.0", "mlp.fc2": "ffn.layers.1"}[part]
        case ("exp",):
            return "backbone.conv_1x1_exp"
        case ("head",):
            return "head.fc"


def _cvnets(role) -> str | tuple:
    """apple/ml-cvnets mobilevit.py: ConvLayer.block.(conv|norm), InvertedResidual.block.(exp_1x1|
    conv_3x3|red_1x1), MobileViTBlock.(local_rep.conv_3x3|conv_1x1, global_rep.k.pre_norm_mha.(0|1.
    qkv_proj|1.out_proj), pre_norm_ffn.(0|1|4), conv_proj, fusion), classifier.fc."""
    match role:
        case ("stem",):
            return "conv_1"
        case ("ir", i, j, part, _):
            return f"layer_{i + 1}.{j}.block." + {"expand": "exp_1x1", "dw": "conv_3x3", "project": "red_1x1"}[part]
        case ("vit", i, name):
            base = f"layer_{i + 1}.1"
            return {"conv_local": f"{base}.local_rep.conv_3x3", "conv_in": f"{base}.local_rep.conv_1x1.block.conv",
                    "norm": ("final_ln", f"{base}.global_rep"), "conv_proj": f"{base}.conv_proj",
                    "conv_fusion": f"{base}.fusion"}[name]
        case ("tf", i, k, part):
            base = f"layer_{i + 1}.1.global_rep.{k}"
            return f"{base}." + {"norm1": "pre_norm_mha.0", "attn.qkv": "pre_norm_mha.1.qkv_proj",
                                 "attn.proj": "pre_norm_mha.1.out_proj", "norm2": "pre_norm_ffn.0",
                                 "mlp.fc1": "pre_norm_ffn.1", "mlp.fc2": "pre_norm_ffn.4"}[part]
        case ("exp",):
            return "conv_1x1_exp"
        case ("head",):
            return "classifier.fc"


def _timm(role) -> str | tuple:
    """huggingface/pytorch-image-models mobilevit.py + byobnet.py: ConvNormAct(conv, bn), BottleneckBlock
    (conv1_1x1, conv2_kxk, conv3_1x1), MobileVitBlock(conv_kxk, conv_1x1, transformer.k.(norm1, attn.qkv,
    attn.proj, norm2, mlp.fc1, mlp.fc2), norm, conv_proj, conv_fusion), final_conv, head.fc."""
    match role:
        case ("stem",):
            return "stem"
        case ("ir", i, j, part, _):
            return f"stages.{i}.{j}." + {"expand": "conv1_1x1", "dw": "conv2_kxk", "project": "conv3_1x1"}[part]
        case ("vit", i, name):
            base = f"stages.{i}.1"
            return f"{base}." + {"conv_local": "conv_kxk", "conv_in": "conv_1x1", "norm": "norm",
                                 "conv_proj": "conv_proj", "conv_fusion": "conv_fusion"}[name]
        case ("tf", i, k, part):
            return f"stages.{i}.1.transformer.{k}.{part}"
        case ("exp",):
            return "final_conv"
        case ("head",):
            return "head.fc"


def _huggingface(role) -> str | tuple:
    """huggingface/transformers modeling_mobilevit.py: MobileViTConvLayer(convolution, normalization),
    MobileViTInvertedResidual(expand_1x1, conv_3x3, reduce_1x1), MobileViTLayer(downsampling_layer,
    conv_kxk, conv_1x1, transformer.layer.k.(layernorm_before, attention.attention.(query|key|value),
    attention.output.dense, layernorm_after, intermediate.dense, output.dense), layernorm,
    conv_projection, fusion), conv_1x1_exp, classifier."""
    match role:
        case ("stem",):
            return "mobilevit.conv_stem"
        case ("ir", i, j, part, _):
            name = {"expand": "expand_1x1", "dw": "conv_3x3", "project": "reduce_1x1"}[part]
            if i >= 2:
                return f"mobilevit.encoder.layer.{i}.downsampling_layer.{name}"
            return f"mobilevit.encoder.layer.{i}.layer.{j}.{name}"
        case ("vit", i, name):
            base = f"mobilevit.encoder.layer.{i}"
            return f"{base}." + {"conv_local": "conv_kxk", "conv_in": "conv_1x1.convolution", "norm": "layernorm",
                                 "conv_proj": "conv_projection", "conv_fusion": "fusion"}[name]
        case ("tf", i, k, part):
            base = f"mobilevit.encoder.layer.{i}.transformer.layer.{k}"
            if part == "attn.qkv":
                return ("qkv3", f"{base}.attention.attention.query", f"{base}.attention.attention.key",
                        f"{base}.attention.attention.value")
            return f"{base}." + {"norm1": "layernorm_before", "attn.proj": "attention.output.dense",
                                 "norm2": "layernorm_after", "mlp.fc1": "intermediate.dense",
                                 "mlp.fc2": "output.dense"}[part]
        case ("exp",):
            return "mobilevit.conv_1x1_exp"
        case ("head",):
            return "classifier"


@dataclass(frozen=True)
class Format:
    """A public checkpoint layout: module naming, conv/norm child names, and a marker key."""

    name: str
    module: Callable
    conv: str  # child holding the conv weight inside a conv+norm unit
    bn: str  # child holding the BatchNorm inside a conv+norm unit
    marker: str  # a key only this format has
    source: str


FORMATS: dict[str, Format] = {
    "mmpretrain": Format("mmpretrain", _mmpretrain, "conv", "bn", "backbone.stem.conv.weight",
                         "open-mmlab/mmpretrain mmpretrain/models/backbones/mobilevit.py"),
    "cvnets": Format("cvnets", _cvnets, "block.conv", "block.norm", "conv_1.block.conv.weight",
                     "apple/ml-cvnets cvnets/models/classification/mobilevit.py"),
    "timm": Format("timm", _timm, "conv", "bn", "final_conv.conv.weight",
                   "huggingface/pytorch-image-models timm/models/mobilevit.py"),
    "huggingface": Format("huggingface", _huggingface, "convolution", "normalization",
                          "mobilevit.conv_stem.convolution.weight",
                          "huggingface/transformers models/mobilevit/modeling_mobilevit.py"),
}


def key_map(fmt: Format, cfg: MobileViTConfig) -> dict[str, object]:
    """Our parameter key -> their key (or a tuple of three keys to fuse for HF's q/k/v)."""
    out: dict[str, object] = {}
    n_layers = {i: s.num_layers for i, s in enumerate(cfg.stages)}
    for ours, role in _our_units(cfg):
        theirs = fmt.module(role)
        kind = _kind(ours)
        if isinstance(theirs, tuple) and theirs[0] == "final_ln":  # the LN after the L transformer layers
            theirs = f"{theirs[1]}.{n_layers[role[1]]}"
        if kind == "convbn":
            out[f"{ours}.conv.weight"] = f"{theirs}.{fmt.conv}.weight"
            for p in BN_PARAMS:
                out[f"{ours}.bn.{p}"] = f"{theirs}.{fmt.bn}.{p}"
        elif kind == "conv":
            out[f"{ours}.weight"] = f"{theirs}.weight"
        elif isinstance(theirs, tuple):  # ("qkv3", q, k, v)
            for p in ("weight", "bias"):
                out[f"{ours}.{p}"] = tuple(f"{t}.{p}" for t in theirs[1:])
        else:
            for p in ("weight", "bias"):
                out[f"{ours}.{p}"] = f"{theirs}.{p}"
    return out


# --------------------------------------------------------------------------------- remapping
def _unwrap(obj) -> dict[str, torch.Tensor]:
    """The tensor dict inside common wrappers (``state_dict``, ``model``, DDP ``module.`` prefix)."""
    if isinstance(obj, dict):
        for key in ("state_dict", "model", "model_state_dict"):
            if key in obj and isinstance(obj[key], dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise NotACheckpointError("the file holds no state dict (a mapping of parameter names to tensors)")
    if all(k.startswith("module.") for k in obj):
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return obj


def detect_format(sd: dict[str, torch.Tensor]) -> str:
    """``ours`` or one of :data:`FORMATS`, from marker keys."""
    if "stem.conv.weight" in sd and "conv_exp.conv.weight" in sd or "stages.0.0.dw.conv.weight" in sd:
        return "ours"
    for name, fmt in FORMATS.items():
        if fmt.marker in sd:
            return name
    sample = ", ".join(list(sd)[:5])
    raise UnknownFormatError(
        f"unknown checkpoint format (first keys: {sample}); expected MobileViT v1 weights from mmpretrain, "
        "ml-cvnets, timm, Hugging Face, or this toolkit")


def remap(sd: dict[str, torch.Tensor], fmt_name: str, cfg: MobileViTConfig) -> tuple[dict, list[str], list[str]]:
    """Pure: their state dict -> ours, plus (missing their-keys, unexpected their-keys)."""
    if fmt_name == "ours":
        return dict(sd), [], []
    fmt = FORMATS[fmt_name]
    out, used, missing = {}, set(), []
    for ours, theirs in key_map(fmt, cfg).items():
        keys = theirs if isinstance(theirs, tuple) else (theirs,)
        absent = [k for k in keys if k not in sd]
        if absent:
            if ours.endswith("num_batches_tracked"):  # optional in many exports
                out[ours] = torch.tensor(0, dtype=torch.long)
                continue
            missing += absent
            continue
        used.update(keys)
        out[ours] = torch.cat([sd[k] for k in keys]) if len(keys) > 1 else sd[keys[0]]
    ignorable = ("num_batches_tracked",)
    unexpected = [k for k in sd if k not in used and not k.endswith(ignorable)]
    return out, missing, unexpected


def _expected_shapes(cfg: MobileViTConfig) -> dict[str, torch.Size]:
    from .model import MobileViT

    with torch.device("meta"):
        model = MobileViT(cfg)
    return {k: v.shape for k, v in model.state_dict().items()}


def _num_classes(sd: dict[str, torch.Tensor]) -> int | None:
    head = sd.get("head.weight")
    return int(head.shape[0]) if head is not None else None


def _shape_problems(sd, cfg) -> list[str]:
    want = _expected_shapes(cfg)
    return [f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(want[k])}"
            for k, v in sd.items() if k in want and tuple(v.shape) != tuple(want[k])]


def detect_variant(sd: dict[str, torch.Tensor], fmt_name: str) -> tuple[str, dict]:
    """The variant whose shapes all match; raises :class:`ShapeMismatchError` naming the closest."""
    scores = {}
    for name, cfg in VARIANTS.items():
        ours, _, _ = remap(sd, fmt_name, cfg)
        n = _num_classes(ours) or cfg.num_classes
        cfg = get_config(name, num_classes=n)
        problems = _shape_problems(ours, cfg)
        if not problems:
            return name, ours
        scores[name] = problems
    best = min(scores, key=lambda k: len(scores[k]))
    raise ShapeMismatchError(
        f"the {fmt_name} checkpoint matches no MobileViT variant; it looks most like {best}, with "
        f"{len(scores[best])} shape mismatches: " + "; ".join(scores[best][:5]))


# ----------------------------------------------------------------------------------- loading
def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_file(path: str | Path) -> object:
    """Load tensors without running code: safetensors, or torch.load(weights_only=True)."""
    path = Path(path)
    if not path.exists():
        raise CheckpointNotFoundError(f"checkpoint {path} does not exist: check the path given to --weights")
    if path.is_dir():
        for name in ("model.safetensors", "pytorch_model.bin"):
            if (path / name).exists():
                return read_file(path / name)
        raise NotACheckpointError(f"{path} is a folder without model.safetensors or pytorch_model.bin")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as e:
            raise TruncatedCheckpointError(
                f"{path} is not a readable safetensors file ({e}); it may be truncated: download it again") from e
    with open(path, "rb") as f:
        head = f.read(4)
    if not (head.startswith(b"PK") or head.startswith(b"\x80")):  # zip (torch >= 1.6) or a pickle
        raise NotACheckpointError(
            f"{path} is not a checkpoint (neither a PyTorch file nor safetensors): pass a .pth/.pt/.bin or "
            ".safetensors file")
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "Weights only load failed" in str(e):
            raise UnsafeCheckpointError(
                f"{path} needs arbitrary code to unpickle, which is refused for safety. Re-save just its "
                "tensors (torch.save(model.state_dict(), ...)) or convert it to safetensors") from e
        raise NotACheckpointError(f"{path} is not a PyTorch checkpoint ({e})") from e
    except (RuntimeError, zipfile.BadZipFile, EOFError, OSError, ValueError) as e:
        if head.startswith(b"PK") or isinstance(e, EOFError):
            raise TruncatedCheckpointError(
                f"{path} looks like a PyTorch checkpoint but cannot be read ({str(e).splitlines()[0]}); it is "
                "probably truncated or corrupt: download it again") from e
        raise NotACheckpointError(
            f"{path} is not a checkpoint (neither a PyTorch file nor safetensors): pass a .pth/.pt/.bin or "
            ".safetensors file") from e


@dataclass
class LoadedCheckpoint:
    state_dict: dict[str, torch.Tensor]
    format: str
    variant: str
    num_classes: int
    class_names: list[str] | None
    origin: str
    sha256: str


def load_checkpoint(path: str | Path, variant: str | None = None) -> LoadedCheckpoint:
    """Read, detect the format and variant, and remap to our keys (validated against the model)."""
    path = Path(path)
    raw = read_file(path)
    meta = raw if isinstance(raw, dict) and raw.get("format") == OUR_FORMAT else {}
    sd = _unwrap(raw)
    fmt_name = detect_format(sd)
    detected, ours = detect_variant_or_explain(sd, fmt_name)
    if variant is not None and get_config(variant).name != detected:
        raise VariantMismatchError(
            f"{path.name} holds MobileViT {detected} weights ({fmt_name} format), not {variant}: "
            f"pass --variant {detected}")
    cfg = get_config(detected, num_classes=_num_classes(ours) or 1000)
    _, missing, unexpected = remap(sd, fmt_name, cfg)
    want = _expected_shapes(cfg)
    missing_ours = sorted(set(want) - set(ours))
    if missing or unexpected or missing_ours:
        raise KeyMismatchError(_key_message(path, fmt_name, missing + missing_ours, unexpected))
    return LoadedCheckpoint(ours, fmt_name, detected, cfg.num_classes, meta.get("class_names"),
                            meta.get("origin") or f"{fmt_name}:{path.name}", sha256_file(path))


def detect_variant_or_explain(sd, fmt_name):
    """Like :func:`detect_variant`, but a key problem is reported as one (not as shapes)."""
    for name, cfg in VARIANTS.items():
        _, missing, unexpected = remap(sd, fmt_name, cfg)
        if not missing and not unexpected:
            return detect_variant(sd, fmt_name)
    # keys do not fit any variant exactly: pick the variant with the fewest key problems
    counts = {}
    for name, cfg in VARIANTS.items():
        _, missing, unexpected = remap(sd, fmt_name, cfg)
        counts[name] = (missing, unexpected)
    best = min(counts, key=lambda k: len(counts[k][0]) + len(counts[k][1]))
    missing, unexpected = counts[best]
    raise KeyMismatchError(_key_message(None, fmt_name, missing, unexpected, best))


def _key_message(path, fmt_name, missing, unexpected, variant=None) -> str:
    def cap(keys):
        return ", ".join(keys[:8]) + (f" ... (+{len(keys) - 8} more)" if len(keys) > 8 else "")

    where = f"{path.name}: " if path else ""
    like = f" (closest variant: {variant})" if variant else ""
    parts = [f"{where}the {fmt_name} checkpoint does not fit MobileViT v1{like}"]
    if missing:
        parts.append(f"missing keys: {cap(missing)}")
    if unexpected:
        parts.append(f"unexpected keys: {cap(unexpected)}")
    parts.append("is it a complete MobileViT v1 classification checkpoint (not v2, not a detection model)?")
    return "; ".join(parts)


def load_model(path: str | Path, variant: str | None = None, patches: str = "reference"):
    """A :class:`~mobilevit.model.MobileViT` with the checkpoint's weights, in eval mode."""
    from .model import MobileViT

    ckpt = load_checkpoint(path, variant)
    model = MobileViT(get_config(ckpt.variant, num_classes=ckpt.num_classes), patches=patches)
    model.load_state_dict(ckpt.state_dict, strict=True)
    return model.eval()


# ------------------------------------------------------------------------------- our format
def save_checkpoint(model, path: str | Path, *, class_names: list[str] | None = None, origin: str = "",
                    extra: dict | None = None) -> Path:
    """Write our format atomically (temp file in the same folder, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if class_names is not None and len(class_names) != model.cfg.num_classes:
        raise ValueError(f"{len(class_names)} class names for a {model.cfg.num_classes}-class head")
    payload = {"format": OUR_FORMAT, "format_version": OUR_FORMAT_VERSION, "variant": model.cfg.name,
               "num_classes": model.cfg.num_classes, "class_names": list(class_names) if class_names else None,
               "origin": origin, "extra": dict(extra or {}), "state_dict": model.state_dict()}
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        torch.save(payload, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def to_format(state_dict: dict[str, torch.Tensor], fmt_name: str, cfg: MobileViTConfig) -> dict[str, torch.Tensor]:
    """Pure inverse of :func:`remap`: our state dict in a public format's naming (HF q/k/v split)."""
    out = {}
    for ours, theirs in key_map(FORMATS[fmt_name], cfg).items():
        if isinstance(theirs, tuple):
            for key, chunk in zip(theirs, state_dict[ours].chunk(len(theirs))):
                out[key] = chunk.clone()
        else:
            out[theirs] = state_dict[ours].clone()
    return out
