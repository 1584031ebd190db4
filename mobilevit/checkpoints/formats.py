"""Import the public MobileViT v1 checkpoints (mmpretrain, Apple ml-cvnets, timm, Hugging Face) and ours.

Every public format is a *layout*: a function from one of our modules (described by a role such as
``("tf", stage, layer, "attn.qkv")``) to the name the format gives it. :func:`remap` turns a layout
into a pure ``state_dict -> state_dict`` function; :func:`from_mmpretrain`, :func:`from_cvnets`,
:func:`from_timm` and :func:`from_huggingface` are those functions with the variant detected from
the tensor shapes, and they return the state dict unchanged when it already uses our names.

Where the layouts come from (module attribute names and ``nn.Sequential`` indices):

* mmpretrain: ``mmpretrain/models/backbones/mobilevit.py`` (stem, layers, local_rep, global_rep,
  conv_proj, conv_fusion, conv_1x1_exp), ``mobilenet_v2.py`` (InvertedResidual.conv), and
  ``vision_transformer.py`` (TransformerEncoderLayer: ln1, attn.qkv, attn.proj, ln2, ffn); mmcv's
  ConvModule (conv, bn) and FFN (layers.0.0, layers.1); the head is ``LinearClsHead.fc``.
* ml-cvnets: ``cvnets/models/classification/mobilevit.py`` (conv_1, layer_1..5, conv_1x1_exp,
  classifier.fc), ``cvnets/modules/mobilenetv2.py`` (block.exp_1x1/conv_3x3/red_1x1),
  ``cvnets/modules/mobilevit_block.py`` (local_rep.conv_3x3/conv_1x1, global_rep, conv_proj,
  fusion), ``cvnets/modules/transformer.py`` (pre_norm_mha.0/1, pre_norm_ffn.0/1/4) and
  ``cvnets/layers/conv_layer.py`` (block.conv, block.norm); transformers'
  ``convert_mlcvnets_to_pytorch.py`` confirms the names in Apple's released ``.pt`` files.
* timm: ``timm/models/mobilevit.py`` (MobileVitBlock: conv_kxk, conv_1x1, transformer, norm,
  conv_proj, conv_fusion) and ``timm/models/byobnet.py`` (BottleneckBlock conv1_1x1/conv2_kxk/
  conv3_1x1, stem, final_conv, ``ClassifierHead.fc``).
* Hugging Face: ``transformers/models/mobilevit/modeling_mobilevit.py``; its attention has separate
  query/key/value Linears, which are concatenated into our fused ``qkv`` (q rows first).

Segmentation (DeepLabV3-MobileViT, Hugging Face and ml-cvnets) reuses each library's backbone layout under
its prefix and adds the head's names: see the segmentation section at the end; :func:`load_segmentation_checkpoint`
is its entry point, and a classification checkpoint given there raises :class:`TaskMismatchError`.

None of the formats has attention masks or relative-position buffers; BatchNorm
``num_batches_tracked`` is optional (stripped files get zeros) and the classifier lives at
``head.fc`` (mmpretrain, timm), ``classifier.fc`` (ml-cvnets) or ``classifier`` (Hugging Face).

Loading never unpickles arbitrary code: safetensors, or ``torch.load(..., weights_only=True)``
(plus numpy arrays/scalars/dtypes, which some training tools leave in the metadata). Every problem
raises a :class:`CheckpointError` subclass whose message names the problem and the fix.
"""
from __future__ import annotations

import hashlib
import os
import pickle
import tempfile
import zipfile
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Callable, NamedTuple

import torch

from ..config import (
    SEGMENTATION_VARIANTS,
    VARIANTS,
    VOC_CLASSES,
    MobileViTConfig,
    SegmentationConfig,
    StageKind,
    UnknownVariantError,
    get_config,
    get_segmentation_config,
)

OUR_FORMAT = "mobilevit-export"
OUR_FORMAT_VERSION = 1
BN_PARAMS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
MAX_LISTED = 8  # keys named in an error message before "... (+N more)"
MAX_ABS_WEIGHT = 1e6  # no trained MobileViT tensor comes near this (BatchNorm variances stay below ~1e3)


# ------------------------------------------------------------------------------------- errors
class CheckpointError(ValueError):
    """Base class: a checkpoint that cannot be read, recognised or loaded (or saved)."""


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """The path does not exist."""


class NotACheckpointError(CheckpointError):
    """The file is something else (an image, text, a pickle without tensors...)."""


class TruncatedCheckpointError(CheckpointError):
    """The file starts like a checkpoint but cannot be read to the end."""


class UnsafeCheckpointError(CheckpointError):
    """Reading the file would run code from its pickle (``weights_only`` refused it)."""


class UnknownFormatError(CheckpointError):
    """Tensors whose names match none of the supported formats."""


class KeyMismatchError(CheckpointError):
    """A recognised format with missing or unexpected keys."""

    def __init__(self, message: str, missing: list[str] = (), unexpected: list[str] = ()):
        super().__init__(message)
        self.missing, self.unexpected = list(missing), list(unexpected)


class ShapeMismatchError(CheckpointError):
    """All keys present, but some tensor shapes fit no variant."""


class VariantMismatchError(CheckpointError):
    """The checkpoint holds another variant than the one asked for."""


class TaskMismatchError(CheckpointError):
    """A checkpoint for another task: e.g. classification weights given where a segmentation model is loaded."""


class CorruptWeightsError(CheckpointError):
    """Tensors holding NaN/Inf or absurd magnitudes: a diverged run or a damaged file."""


class CheckpointWriteError(CheckpointError, OSError):
    """Saving failed; nothing was left at the destination."""


def _cap(keys: list[str]) -> str:
    more = len(keys) - MAX_LISTED
    return ", ".join(keys[:MAX_LISTED]) + (f" ... (+{more} more)" if more > 0 else "")


# ------------------------------------------------------------------------------------ layouts
# Roles name our modules independently of our attribute names:
#   ("stem",) / ("exp",) / ("head",)
#   ("ir", stage, block, part, has_expand)      part: expand | dw | project
#   ("vit", stage, part)                        part: conv_local | conv_in | norm | conv_proj | conv_fusion
#   ("tf", stage, layer, part)                  part: norm1 | attn.qkv | attn.proj | norm2 | mlp.fc1 | mlp.fc2
# A layout returns the format's module name for a role; ("final_ln", prefix) means "the LayerNorm
# appended after the L transformer layers in a Sequential", i.e. f"{prefix}.{L}"; ("qkv3", q, k, v)
# means three Linears to concatenate into our fused qkv.


def _our_units(cfg: MobileViTConfig):
    """Yield (our module, role) in our model's order."""
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
    """What parameters our module has: convbn, conv (weight only), or affine (weight + bias)."""
    last = our.rsplit(".", 1)[-1]
    if last == "conv_in":
        return "conv"
    if last in ("norm1", "norm2", "norm", "qkv", "proj", "fc1", "fc2", "head"):
        return "affine"  # LayerNorm or Linear
    return "convbn"


def _mmpretrain(role) -> str | tuple:
    match role:
        case ("stem",):
            return "backbone.stem"
        case ("ir", i, j, part, expand):  # InvertedResidual.conv = Sequential([expand], dw, project)
            k = {"expand": 0, "dw": 1 if expand else 0, "project": 2 if expand else 1}[part]
            return f"backbone.layers.{i}.{j}.conv.{k}"
        case ("vit", i, name):
            base = f"backbone.layers.{i}.1"
            return {"conv_local": f"{base}.local_rep.0", "conv_in": f"{base}.local_rep.1.conv",
                    "norm": ("final_ln", f"{base}.global_rep"), "conv_proj": f"{base}.conv_proj",
                    "conv_fusion": f"{base}.conv_fusion"}[name]
        case ("tf", i, k, part):
            return f"backbone.layers.{i}.1.global_rep.{k}." + {
                "norm1": "ln1", "attn.qkv": "attn.qkv", "attn.proj": "attn.proj", "norm2": "ln2",
                "mlp.fc1": "ffn.layers.0.0", "mlp.fc2": "ffn.layers.1"}[part]
        case ("exp",):
            return "backbone.conv_1x1_exp"
        case ("head",):
            return "head.fc"


def _cvnets(role) -> str | tuple:
    match role:
        case ("stem",):
            return "conv_1"
        case ("ir", i, j, part, _):
            name = {"expand": "exp_1x1", "dw": "conv_3x3", "project": "red_1x1"}[part]
            return f"layer_{i + 1}.{j}.block.{name}"
        case ("vit", i, name):
            base = f"layer_{i + 1}.1"
            return {"conv_local": f"{base}.local_rep.conv_3x3",
                    "conv_in": f"{base}.local_rep.conv_1x1.block.conv",
                    "norm": ("final_ln", f"{base}.global_rep"), "conv_proj": f"{base}.conv_proj",
                    "conv_fusion": f"{base}.fusion"}[name]
        case ("tf", i, k, part):
            return f"layer_{i + 1}.1.global_rep.{k}." + {
                "norm1": "pre_norm_mha.0", "attn.qkv": "pre_norm_mha.1.qkv_proj",
                "attn.proj": "pre_norm_mha.1.out_proj", "norm2": "pre_norm_ffn.0",
                "mlp.fc1": "pre_norm_ffn.1", "mlp.fc2": "pre_norm_ffn.4"}[part]
        case ("exp",):
            return "conv_1x1_exp"
        case ("head",):
            return "classifier.fc"


def _timm(role) -> str | tuple:
    match role:
        case ("stem",):
            return "stem"
        case ("ir", i, j, part, _):
            name = {"expand": "conv1_1x1", "dw": "conv2_kxk", "project": "conv3_1x1"}[part]
            return f"stages.{i}.{j}.{name}"
        case ("vit", i, name):
            return f"stages.{i}.1." + {"conv_local": "conv_kxk", "conv_in": "conv_1x1", "norm": "norm",
                                       "conv_proj": "conv_proj", "conv_fusion": "conv_fusion"}[name]
        case ("tf", i, k, part):
            return f"stages.{i}.1.transformer.{k}.{part}"
        case ("exp",):
            return "final_conv"
        case ("head",):
            return "head.fc"


def _huggingface(role) -> str | tuple:
    match role:
        case ("stem",):
            return "mobilevit.conv_stem"
        case ("ir", i, j, part, _):
            name = {"expand": "expand_1x1", "dw": "conv_3x3", "project": "reduce_1x1"}[part]
            if i >= 2:  # MobileViTLayer: the strided inverted residual is its downsampling_layer
                return f"mobilevit.encoder.layer.{i}.downsampling_layer.{name}"
            return f"mobilevit.encoder.layer.{i}.layer.{j}.{name}"
        case ("vit", i, name):
            return f"mobilevit.encoder.layer.{i}." + {
                "conv_local": "conv_kxk", "conv_in": "conv_1x1.convolution", "norm": "layernorm",
                "conv_proj": "conv_projection", "conv_fusion": "fusion"}[name]
        case ("tf", i, k, part):
            base = f"mobilevit.encoder.layer.{i}.transformer.layer.{k}"
            if part == "attn.qkv":
                return ("qkv3",) + tuple(f"{base}.attention.attention.{n}" for n in ("query", "key", "value"))
            return f"{base}." + {"norm1": "layernorm_before", "attn.proj": "attention.output.dense",
                                 "norm2": "layernorm_after", "mlp.fc1": "intermediate.dense",
                                 "mlp.fc2": "output.dense"}[part]
        case ("exp",):
            return "mobilevit.conv_1x1_exp"
        case ("head",):
            return "classifier"


@dataclass(frozen=True)
class Format:
    """A public checkpoint layout."""

    name: str
    module: Callable  # role -> module name (see the comment above _our_units)
    conv: str  # child holding the conv weight inside a conv+norm unit
    bn: str  # child holding the BatchNorm inside a conv+norm unit
    markers: tuple[str, ...]  # key prefixes/infixes that only this format uses
    source: str


FORMATS: dict[str, Format] = {
    "mmpretrain": Format("mmpretrain", _mmpretrain, "conv", "bn", ("backbone.stem.conv.", "backbone.layers."),
                         "open-mmlab/mmpretrain mmpretrain/models/backbones/mobilevit.py"),
    "cvnets": Format("cvnets", _cvnets, "block.conv", "block.norm", ("conv_1.block.", "layer_1.0.block."),
                     "apple/ml-cvnets cvnets/models/classification/mobilevit.py"),
    "timm": Format("timm", _timm, "conv", "bn",
                   ("final_conv.conv.", ".conv1_1x1.", ".conv2_kxk.", ".conv3_1x1."),
                   "huggingface/pytorch-image-models timm/models/mobilevit.py"),
    "huggingface": Format("huggingface", _huggingface, "convolution", "normalization",
                          ("mobilevit.conv_stem.", "mobilevit.encoder."),
                          "huggingface/transformers src/transformers/models/mobilevit/modeling_mobilevit.py"),
}
OUR_MARKERS = ("conv_exp.conv.", ".dw.conv.", ".conv_local.conv.")


def key_map(fmt: Format, cfg: MobileViTConfig) -> dict[str, str | tuple[str, ...]]:
    """Our state-dict key -> the format's key (a tuple of three keys for HF's separate q/k/v)."""
    out: dict[str, str | tuple[str, ...]] = {}
    for ours, role in _our_units(cfg):
        theirs = fmt.module(role)
        kind = _kind(ours)
        if isinstance(theirs, tuple) and theirs[0] == "final_ln":
            theirs = f"{theirs[1]}.{cfg.stages[role[1]].num_layers}"
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
class Remapped(NamedTuple):
    state_dict: dict[str, torch.Tensor]  # our keys
    missing: list[str]  # the format's keys that the checkpoint lacks
    unexpected: list[str]  # checkpoint keys that nothing maps
    sources: dict[str, str]  # our key -> the checkpoint key(s) it came from, for messages


def detect_format(sd: dict[str, torch.Tensor]) -> str:
    """``ours`` or a key of :data:`FORMATS`, from characteristic key names."""
    def hits(markers):
        return sum(any(m in k for m in markers) for k in sd)

    scores = {"ours": hits(OUR_MARKERS)} | {name: hits(fmt.markers) for name, fmt in FORMATS.items()}
    best = max(scores, key=scores.get)
    if scores[best] == 0:
        v2 = any("pre_norm_attn" in k or "mobilevitv2" in k for k in sd)
        hint = " It looks like MobileViT v2, which this toolkit does not implement." if v2 else ""
        raise UnknownFormatError(
            f"unknown checkpoint format (first keys: {_cap(list(sd)[:5])}).{hint} Expected MobileViT v1 "
            "classification weights from mmpretrain, ml-cvnets, timm, Hugging Face, or this toolkit")
    return best


def remap(sd: dict[str, torch.Tensor], fmt_name: str, cfg: MobileViTConfig) -> Remapped:
    """Pure: a state dict in ``fmt_name``'s naming -> ours, with what was missing or left over."""
    if fmt_name == "ours":
        want = _expected_shapes(cfg.name, cfg.num_classes)
        out = {k: torch.tensor(0, dtype=torch.long) for k in want if k.endswith("num_batches_tracked")}
        out.update(sd)  # zeros only where the file has no num_batches_tracked
        missing = [k for k in want if k not in out]
        return Remapped(out, missing, [k for k in sd if k not in want], {k: k for k in sd})
    return _apply_key_map(sd, key_map(FORMATS[fmt_name], cfg))


def _apply_key_map(sd: dict[str, torch.Tensor], kmap: dict[str, str | tuple[str, ...]]) -> Remapped:
    """Pure: rename (and fuse HF's q/k/v) by ``kmap`` (ours -> theirs), listing what is missing or left over."""
    out, sources, used, missing = {}, {}, set(), []
    for ours, theirs in kmap.items():
        keys = theirs if isinstance(theirs, tuple) else (theirs,)
        absent = [k for k in keys if k not in sd]
        if absent:
            if ours.endswith("num_batches_tracked"):  # often stripped from released files
                out[ours] = torch.tensor(0, dtype=torch.long)
            else:
                missing += absent
            continue
        used.update(keys)
        out[ours] = torch.cat([sd[k] for k in keys]) if len(keys) > 1 else sd[keys[0]]
        sources[ours] = " + ".join(keys)
    unexpected = [k for k in sd if k not in used and not k.endswith("num_batches_tracked")]
    return Remapped(out, missing, unexpected, sources)


@lru_cache(maxsize=None)
def _expected_shapes(variant: str, num_classes: int) -> dict[str, tuple[int, ...]]:
    from ..model import MobileViT

    with torch.device("meta"):
        model = MobileViT(get_config(variant, num_classes=num_classes))
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _num_classes(sd: dict[str, torch.Tensor]) -> int:
    head = sd.get("head.weight")
    return int(head.shape[0]) if head is not None and head.dim() == 2 else 1000


def _shape_problems(r: Remapped, variant: str) -> list[str]:
    want = _expected_shapes(variant, _num_classes(r.state_dict))
    return [f"{k} (checkpoint key {r.sources.get(k, k)}): checkpoint {tuple(v.shape)} vs model {want[k]}"
            for k, v in r.state_dict.items() if k in want and tuple(v.shape) != want[k]]


class Converted(NamedTuple):
    state_dict: dict[str, torch.Tensor]
    format: str
    variant: str
    num_classes: int


def _resolve_variant(variant: str | None) -> str | None:
    if variant is None:
        return None
    try:
        return get_config(variant).name
    except UnknownVariantError as e:
        raise VariantMismatchError(str(e)) from e


def convert_state_dict(sd: dict[str, torch.Tensor], fmt_name: str | None = None,
                       variant: str | None = None, where: str = "") -> Converted:
    """Detect format (unless given) and variant (checked against ``variant`` if given); remap to ours.

    Raises :class:`KeyMismatchError`, :class:`ShapeMismatchError` or :class:`VariantMismatchError`.
    """
    fmt_name = fmt_name or detect_format(sd)
    asked = _resolve_variant(variant)
    # All variants share one key layout (2/4/3 transformer layers); shapes tell them apart.
    results = {name: remap(sd, fmt_name, VARIANTS[name]) for name in VARIANTS}
    name = _choose_variant(results, _shape_problems, asked, fmt_name, where, "MobileViT v1", "MobileViT",
                           "pass a complete MobileViT v1 classification checkpoint (not v2, not a backbone-only "
                           "or detection/segmentation model)")
    ours = results[name].state_dict
    return Converted(ours, fmt_name, name, _num_classes(ours))


def _choose_variant(results: dict[str, Remapped], shape_problems: Callable[[Remapped, str], list[str]],
                    asked: str | None, fmt_name: str, where: str, model: str, family: str, keys_hint: str) -> str:
    """The variant whose key layout and shapes the checkpoint fits (``asked`` if given), or the typed error.

    ``results``: the checkpoint remapped for each variant; ``shape_problems(remapped, variant)`` lists
    its shape mismatches against that variant (asked only once the keys fit). ``model`` names the
    architecture (``MobileViT v1``), ``family`` its variants (``MobileViT`` x_small).
    """
    where = f"{where}: " if where else ""
    first = results[asked or next(iter(results))]
    if first.missing or first.unexpected:
        parts = [f"{where}the {fmt_name} checkpoint does not fit {model}"]
        if first.missing:
            parts.append(f"missing keys: {_cap(first.missing)}")
        if first.unexpected:
            parts.append(f"unexpected keys: {_cap(first.unexpected)}")
        parts.append(keys_hint)
        raise KeyMismatchError("; ".join(parts), first.missing, first.unexpected)
    problems = {name: shape_problems(r, name) for name, r in results.items()}
    fits = [name for name, p in problems.items() if not p]
    if asked is not None and asked not in fits and fits:
        raise VariantMismatchError(
            f"{where}the checkpoint holds {family} {fits[0]} weights ({fmt_name} format), "
            f"not {asked}: pass --variant {fits[0]} (or no variant, it is detected)")
    if not fits:
        closest = min(problems, key=lambda k: len(problems[k]))
        name = asked or closest
        raise ShapeMismatchError(
            f"{where}the {fmt_name} checkpoint matches no {model} variant; "
            f"it looks most like {closest}. "
            f"{len(problems[name])} shape mismatches against {name}: {_cap(problems[name])}. "
            f"Check that the file is an unmodified {model} checkpoint")
    return asked or fits[0]


def _from(fmt_name: str, sd: dict[str, torch.Tensor], variant: str | None) -> dict[str, torch.Tensor]:
    found = detect_format(sd)
    if found == "ours":  # nothing to remap
        return sd
    if found != fmt_name:
        raise UnknownFormatError(f"this is a {found} state dict, not {fmt_name}: use from_{found}, or "
                                 "convert_state_dict to detect the format")
    return convert_state_dict(sd, fmt_name, variant).state_dict


def from_mmpretrain(sd: dict[str, torch.Tensor], variant: str | None = None) -> dict[str, torch.Tensor]:
    """mmpretrain ``state_dict`` (``backbone.*``, ``head.fc.*``) -> ours."""
    return _from("mmpretrain", sd, variant)


def from_cvnets(sd: dict[str, torch.Tensor], variant: str | None = None) -> dict[str, torch.Tensor]:
    """Apple ml-cvnets state dict (``conv_1.block.*``, ``layer_1..5``, ``classifier.fc.*``) -> ours."""
    return _from("cvnets", sd, variant)


def from_timm(sd: dict[str, torch.Tensor], variant: str | None = None) -> dict[str, torch.Tensor]:
    """timm ByobNet state dict (``stem``, ``stages``, ``final_conv``, ``head.fc``) -> ours."""
    return _from("timm", sd, variant)


def from_huggingface(sd: dict[str, torch.Tensor], variant: str | None = None) -> dict[str, torch.Tensor]:
    """transformers ``MobileViTForImageClassification`` state dict -> ours (q/k/v fused into qkv)."""
    return _from("huggingface", sd, variant)


def to_format(state_dict: dict[str, torch.Tensor], fmt_name: str,
              cfg: MobileViTConfig) -> dict[str, torch.Tensor]:
    """Pure inverse of :func:`remap`: our state dict in a public format's naming (HF q/k/v split)."""
    out = {}
    for ours, theirs in key_map(FORMATS[fmt_name], cfg).items():
        if isinstance(theirs, tuple):
            for key, chunk in zip(theirs, state_dict[ours].chunk(len(theirs))):
                out[key] = chunk.clone()
        else:
            out[theirs] = state_dict[ours].clone()
    return out


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
    return f" (it references {_cap(names)})" if names else ""


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


def _unwrap(obj, path: Path) -> dict[str, torch.Tensor]:
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
            f"{path} holds no state dict: besides tensors it has {_cap(others)}; expected a mapping of "
            "parameter names to tensors, possibly under 'state_dict' or 'model'")
    if all(k.startswith("module.") for k in obj):
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return obj


def huggingface_class_names(path: Path, num_classes: int) -> list[str] | None:
    """``id2label`` from the ``config.json`` beside a Hugging Face checkpoint, unless it is absent or the
    placeholder ``LABEL_i`` names transformers writes when none were given."""
    import json

    config = path.parent / "config.json"
    try:
        id2label = json.loads(config.read_text()).get("id2label") or {}
        names = [str(id2label[str(i)]) for i in range(num_classes)]
    except (OSError, ValueError, KeyError, AttributeError):
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


# ----------------------------------------------------------------------------------- loading
@dataclass
class LoadedCheckpoint:
    state_dict: dict[str, torch.Tensor]  # our keys, ready for MobileViT.load_state_dict(strict=True)
    format: str  # "ours" or a key of FORMATS
    variant: str
    num_classes: int
    class_names: list[str] | None
    origin: str
    sha256: str
    extra: dict = field(default_factory=dict)  # our format's free-form metadata
    # Architecture the file states but its tensors cannot show (SegmentationConfig fields such as
    # output_stride and atrous_rates, from a Hugging Face config.json); empty for the public defaults' files.
    architecture: dict = field(default_factory=dict)


def load_checkpoint(path: str | Path, variant: str | None = None) -> LoadedCheckpoint:
    """Read a checkpoint of any supported format, detect format and variant, remap to our keys."""
    path = resolve_path(path)
    raw = read_file(path)
    meta = raw if isinstance(raw, dict) and raw.get("format") == OUR_FORMAT else {}
    if meta and meta.get("format_version", 0) > OUR_FORMAT_VERSION:
        raise UnknownFormatError(
            f"{path} is format version {meta['format_version']} of {OUR_FORMAT}; this toolkit reads up to "
            f"{OUR_FORMAT_VERSION}: update the toolkit")
    sd = _unwrap(raw, path)
    check_finite(sd, str(path))
    conv = convert_state_dict(sd, variant=variant, where=path.name)
    class_names = meta.get("class_names")
    if conv.format == "huggingface":
        class_names = huggingface_class_names(path, conv.num_classes)
    if meta and meta.get("variant") not in (None, conv.variant):
        raise VariantMismatchError(
            f"{path} says it holds {meta['variant']} but its tensors are {conv.variant}: "
            "the file was edited; save it again with save_checkpoint")
    if class_names is not None and len(class_names) != conv.num_classes:
        raise CheckpointError(
            f"{path} lists {len(class_names)} class names for a {conv.num_classes}-class head: "
            "save it again with matching class_names")
    return LoadedCheckpoint(conv.state_dict, conv.format, conv.variant, conv.num_classes,
                            list(class_names) if class_names is not None else None,
                            meta.get("origin") or f"{conv.format}:{path.name}", sha256_file(path),
                            dict(meta.get("extra") or {}))


def load_model(path: str | Path, variant: str | None = None, patches: str = "reference"):
    """A :class:`~mobilevit.model.MobileViT` holding the checkpoint's weights (strict load), in eval mode."""
    from ..model import MobileViT

    ckpt = load_checkpoint(path, variant)
    model = MobileViT(get_config(ckpt.variant, num_classes=ckpt.num_classes), patches=patches)
    model.load_state_dict(ckpt.state_dict, strict=True)
    return model.eval()


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
    """Write our format atomically: a temporary file in the same folder, fsync, then ``os.replace``.

    Either the complete new file is at ``path`` afterwards, or whatever was there before is untouched
    and no temporary file remains (:class:`CheckpointWriteError`).
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
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        tmp = None
    except OSError as e:
        raise CheckpointWriteError(
            f"could not write {path} ({e}); nothing was written there: check that the folder is writable "
            "and has free space") from e
    finally:
        if tmp is not None:  # failed after the temporary file was created
            Path(tmp).unlink(missing_ok=True)
    return path


# ------------------------------------------------------------------------------ segmentation
# DeepLabV3-MobileViT checkpoints: the backbone keeps the classifier's layout of its format (under a prefix),
# the head adds four roles: ("aspp", i) for the 1x1 (i = 0) and the atrous (i = 1..3) branches,
# ("aspp_pool", i) for the image-pooling branch (the i-th of ASPP's convs), ("aspp_project",), ("seg_classifier",).
# Sources: transformers ``MobileViTForSemanticSegmentation`` (``mobilevit.*``; ``segmentation_head.aspp.convs``,
# ``.convs.4.conv_1x1``, ``.project``, ``segmentation_head.classifier.convolution``), ml-cvnets ``SegEncoderDecoder``
# (``encoder.*``; ``seg_head.aspp.aspp_layer.convs``, ``.convs.4.aspp_pool.conv_1x1``, ``.project``,
# ``seg_head.classifier.block.conv``). transformers' ``convert_mlcvnets_to_pytorch.py`` maps the one onto the other
# (``seg_head.`` -> ``segmentation_head.``, drops ``.aspp_layer.`` / ``.aspp_pool.``) and drops
# ``seg_head.aux_head.*``, the auxiliary training head of ml-cvnets recipes with ``use_aux_head``, which
# inference does not use (the released deeplabv3_mobilevit_*.yaml do not set it).


def _seg_units(cfg: SegmentationConfig):
    """Yield (our head module, role) in our model's order."""
    n = 1 + len(cfg.atrous_rates)
    for i in range(n):
        yield f"head.aspp.convs.{i}", ("aspp", i)
    yield "head.aspp.pool.proj", ("aspp_pool", n)
    yield "head.aspp.project", ("aspp_project",)
    yield "head.classifier", ("seg_classifier",)


def _huggingface_seg_head(role) -> str:
    match role:
        case ("aspp", i):
            return f"segmentation_head.aspp.convs.{i}"
        case ("aspp_pool", i):
            return f"segmentation_head.aspp.convs.{i}.conv_1x1"
        case ("aspp_project",):
            return "segmentation_head.aspp.project"
        case ("seg_classifier",):
            return "segmentation_head.classifier.convolution"


def _cvnets_seg_head(role) -> str:
    match role:
        case ("aspp", i):
            return f"seg_head.aspp.aspp_layer.convs.{i}"
        case ("aspp_pool", i):
            return f"seg_head.aspp.aspp_layer.convs.{i}.aspp_pool.conv_1x1"
        case ("aspp_project",):
            return "seg_head.aspp.aspp_layer.project"
        case ("seg_classifier",):
            return "seg_head.classifier.block.conv"


@dataclass(frozen=True)
class SegmentationFormat:
    """A public DeepLabV3-MobileViT checkpoint layout."""

    name: str
    backbone: Format  # the classifier layout of the same library, reused for every backbone module
    backbone_prefix: str  # put before the backbone layout's names ("encoder." in ml-cvnets)
    head: Callable  # head role -> module name
    markers: tuple[str, ...]  # key infixes that only this format uses
    ignored: tuple[str, ...]  # key prefixes of training-only modules, dropped before remapping
    source: str


SEGMENTATION_FORMATS: dict[str, SegmentationFormat] = {
    "huggingface": SegmentationFormat(
        "huggingface", FORMATS["huggingface"], "", _huggingface_seg_head, ("segmentation_head.aspp.",), (),
        "huggingface/transformers src/transformers/models/mobilevit/modeling_mobilevit.py"),
    "cvnets": SegmentationFormat(
        "cvnets", FORMATS["cvnets"], "encoder.", _cvnets_seg_head, ("seg_head.aspp.aspp_layer.",),
        ("seg_head.aux_head.",), "apple/ml-cvnets cvnets/models/segmentation/enc_dec.py, heads/deeplabv3.py"),
}
OUR_SEGMENTATION_MARKERS = ("head.aspp.pool.proj.", "backbone.stages.")


def segmentation_key_map(fmt: SegmentationFormat, cfg: SegmentationConfig) -> dict[str, str | tuple[str, ...]]:
    """Our segmentation state-dict key -> the format's key (a tuple of three keys for HF's separate q/k/v)."""
    def prefixed(theirs):
        if isinstance(theirs, tuple):
            return tuple(fmt.backbone_prefix + t for t in theirs)
        return fmt.backbone_prefix + theirs

    out = {f"backbone.{ours}": prefixed(theirs) for ours, theirs in key_map(fmt.backbone, cfg.backbone).items()
           if not ours.startswith(("conv_exp.", "head."))}  # a segmentation backbone has neither
    for ours, role in _seg_units(cfg):
        theirs = fmt.head(role)
        if role == ("seg_classifier",):  # 1x1 conv with bias, no norm
            out[f"{ours}.weight"], out[f"{ours}.bias"] = f"{theirs}.weight", f"{theirs}.bias"
            continue
        out[f"{ours}.conv.weight"] = f"{theirs}.{fmt.backbone.conv}.weight"
        for p in BN_PARAMS:
            out[f"{ours}.bn.{p}"] = f"{theirs}.{fmt.backbone.bn}.{p}"
    return out


@lru_cache(maxsize=None)
def _expected_segmentation_shapes(variant: str, num_classes: int) -> dict[str, tuple[int, ...]]:
    from ..segmentation import MobileViTSegmentation

    with torch.device("meta"):
        model = MobileViTSegmentation(get_segmentation_config(variant, num_classes=num_classes))
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _segmentation_num_classes(sd: dict[str, torch.Tensor]) -> int:
    w = sd.get("head.classifier.weight")
    return int(w.shape[0]) if w is not None and w.dim() == 4 else len(VOC_CLASSES)


def _segmentation_shape_problems(r: Remapped, variant: str) -> list[str]:
    want = _expected_segmentation_shapes(variant, _segmentation_num_classes(r.state_dict))
    return [f"{k} (checkpoint key {r.sources.get(k, k)}): checkpoint {tuple(v.shape)} vs model {want[k]}"
            for k, v in r.state_dict.items() if k in want and tuple(v.shape) != want[k]]


def detect_segmentation_format(sd: dict[str, torch.Tensor]) -> str:
    """``ours`` or a key of :data:`SEGMENTATION_FORMATS`, from characteristic key names.

    Raises :class:`TaskMismatchError` for a classification checkpoint (a format of :data:`FORMATS`
    without any segmentation head) and :class:`UnknownFormatError` for anything else.
    """
    def hits(markers):
        return sum(any(m in k for m in markers) for k in sd)

    scores = {"ours": hits(OUR_SEGMENTATION_MARKERS)} | {n: hits(f.markers) for n, f in SEGMENTATION_FORMATS.items()}
    best = max(scores, key=scores.get)
    if scores[best]:
        return best
    try:
        task_format = detect_format(sd)
    except UnknownFormatError:
        task_format = None
    if task_format is not None:
        raise TaskMismatchError(
            f"this is a MobileViT classification checkpoint ({task_format} format), not a segmentation one: it has "
            "no DeepLabV3 head (no ASPP keys). Load it as a classifier (load_checkpoint), or pass a "
            "DeepLabV3-MobileViT checkpoint (ml-cvnets deeplabv3_mobilevit_*.pt, Hugging Face "
            "apple/deeplabv3-mobilevit-*)")
    raise UnknownFormatError(
        f"unknown segmentation checkpoint format (first keys: {_cap(list(sd)[:5])}). Expected DeepLabV3-MobileViT "
        "weights from ml-cvnets, Hugging Face (MobileViTForSemanticSegmentation) or this toolkit")


def remap_segmentation(sd: dict[str, torch.Tensor], fmt_name: str, cfg: SegmentationConfig) -> Remapped:
    """Pure: a segmentation state dict in ``fmt_name``'s naming -> ours (training-only keys dropped)."""
    if fmt_name == "ours":
        want = _expected_segmentation_shapes(cfg.name, cfg.num_classes)
        out = {k: torch.tensor(0, dtype=torch.long) for k in want if k.endswith("num_batches_tracked")}
        out.update(sd)
        return Remapped(out, [k for k in want if k not in out], [k for k in sd if k not in want], {k: k for k in sd})
    fmt = SEGMENTATION_FORMATS[fmt_name]
    kept = {k: v for k, v in sd.items() if not k.startswith(fmt.ignored)} if fmt.ignored else sd
    return _apply_key_map(kept, segmentation_key_map(fmt, cfg))


def convert_segmentation_state_dict(sd: dict[str, torch.Tensor], fmt_name: str | None = None,
                                    variant: str | None = None, where: str = "") -> Converted:
    """Detect format (unless given) and variant (checked against ``variant`` if given); remap to ours.

    Raises :class:`TaskMismatchError`, :class:`KeyMismatchError`, :class:`ShapeMismatchError` or
    :class:`VariantMismatchError`.
    """
    fmt_name = fmt_name or detect_segmentation_format(sd)
    asked = _resolve_variant(variant)
    results = {name: remap_segmentation(sd, fmt_name, cfg) for name, cfg in SEGMENTATION_VARIANTS.items()}
    name = _choose_variant(results, _segmentation_shape_problems, asked, fmt_name, where, "DeepLabV3-MobileViT",
                           "DeepLabV3-MobileViT", "pass a complete DeepLabV3-MobileViT v1 checkpoint (ml-cvnets "
                           "deeplabv3_mobilevit_*.pt or Hugging Face MobileViTForSemanticSegmentation)")
    ours = results[name].state_dict
    return Converted(ours, fmt_name, name, _segmentation_num_classes(ours))


def _from_segmentation(fmt_name: str, sd: dict[str, torch.Tensor], variant: str | None) -> dict[str, torch.Tensor]:
    found = detect_segmentation_format(sd)
    if found == "ours":  # nothing to remap
        return sd
    if found != fmt_name:
        raise UnknownFormatError(f"this is a {found} segmentation state dict, not {fmt_name}: use "
                                 f"from_{found}_segmentation, or convert_segmentation_state_dict to detect the format")
    return convert_segmentation_state_dict(sd, fmt_name, variant).state_dict


def from_huggingface_segmentation(sd: dict[str, torch.Tensor], variant: str | None = None) -> dict[str, torch.Tensor]:
    """transformers ``MobileViTForSemanticSegmentation`` state dict -> ours (q/k/v fused into qkv)."""
    return _from_segmentation("huggingface", sd, variant)


def from_cvnets_segmentation(sd: dict[str, torch.Tensor], variant: str | None = None) -> dict[str, torch.Tensor]:
    """ml-cvnets DeepLabV3-MobileViT state dict (``encoder.*``, ``seg_head.*``; ``aux_head`` dropped) -> ours."""
    return _from_segmentation("cvnets", sd, variant)


def huggingface_segmentation_architecture(path: Path) -> dict:
    """``output_stride`` and ``atrous_rates`` from the ``config.json`` beside a Hugging Face checkpoint.

    No tensor shape depends on them, yet they change the output: transformers' default ``output_stride``
    is 32, the public deeplabv3-mobilevit configs say 8. Empty when there is no readable config.
    """
    import json

    try:
        config = json.loads((path.parent / "config.json").read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(config, dict):
        return {}
    out = {}
    if "output_stride" in config:
        out["output_stride"] = int(config["output_stride"])
    if "atrous_rates" in config:
        out["atrous_rates"] = tuple(int(r) for r in config["atrous_rates"])
    return out


def load_segmentation_checkpoint(path: str | Path, variant: str | None = None) -> LoadedCheckpoint:
    """Read a DeepLabV3-MobileViT checkpoint (file or Hugging Face folder), detect format and variant, remap.

    From a Hugging Face folder's ``config.json`` come the class names (``id2label``, when real ones) and
    the output stride and atrous rates (``architecture``; files without a config get the public models').
    """
    path = resolve_path(path)
    sd = _unwrap(read_file(path), path)
    check_finite(sd, str(path))
    conv = convert_segmentation_state_dict(sd, variant=variant, where=path.name)
    class_names, architecture = None, {}
    if conv.format == "huggingface":
        class_names = huggingface_class_names(path, conv.num_classes)
        architecture = huggingface_segmentation_architecture(path)
        try:
            get_segmentation_config(conv.variant, **architecture)
        except ValueError as e:
            raise CheckpointError(f"{path.parent / 'config.json'}: {e}") from e
    return LoadedCheckpoint(conv.state_dict, conv.format, conv.variant, conv.num_classes, class_names,
                            f"{conv.format}:{path.name}", sha256_file(path), architecture=architecture)


def load_segmentation_model(path: str | Path, variant: str | None = None, patches: str = "reference",
                            upsample: bool = False):
    """A :class:`~mobilevit.segmentation.MobileViTSegmentation` holding the checkpoint's weights, in eval mode."""
    from ..segmentation import MobileViTSegmentation

    ckpt = load_segmentation_checkpoint(path, variant)
    cfg = get_segmentation_config(ckpt.variant, num_classes=ckpt.num_classes, **ckpt.architecture)
    model = MobileViTSegmentation(cfg, patches=patches, upsample=upsample)
    model.load_state_dict(ckpt.state_dict, strict=True)
    return model.eval()
