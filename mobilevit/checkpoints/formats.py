"""The public MobileViT v1 checkpoint layouts (mmpretrain, Apple ml-cvnets, timm, Hugging Face) and ours.

Every public format is a *layout*: a function from one of our modules (described by a role such as
``("tf", stage, layer, "attn.qkv")``, see :mod:`.tasks`) to the name the format gives it. :func:`remap`
turns a layout into a pure ``state_dict -> state_dict`` function for one task and variant;
:func:`from_mmpretrain`, :func:`from_cvnets`, :func:`from_timm`, :func:`from_huggingface` and
:func:`from_ours` are those functions with the format checked and the variant detected from the tensor
shapes, and the first four return the state dict unchanged when it already uses our names.

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

DeepLabV3-MobileViT (segmentation) checkpoints keep the classifier's layout of their library for the backbone,
under a prefix, and add the head's names. Sources: transformers ``MobileViTForSemanticSegmentation``
(``mobilevit.*``; ``segmentation_head.aspp.convs``, ``.convs.4.conv_1x1``, ``.project``,
``segmentation_head.classifier.convolution``), ml-cvnets ``SegEncoderDecoder`` (``encoder.*``;
``seg_head.aspp.aspp_layer.convs``, ``.convs.4.aspp_pool.conv_1x1``, ``.project``, ``seg_head.classifier.block.conv``).
transformers' ``convert_mlcvnets_to_pytorch.py`` maps the one onto the other (``seg_head.`` ->
``segmentation_head.``, drops ``.aspp_layer.`` / ``.aspp_pool.``) and drops ``seg_head.aux_head.*``, the
auxiliary training head of ml-cvnets recipes with ``use_aux_head``, which inference does not use (the released
deeplabv3_mobilevit_*.yaml do not set it). mmpretrain and timm publish no MobileViT segmentation model.

None of the formats has attention masks or relative-position buffers; BatchNorm ``num_batches_tracked``
is optional (stripped files get zeros).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, NamedTuple

import torch

from ..config import UnknownVariantError
from .errors import (
    KeyMismatchError,
    ShapeMismatchError,
    TaskMismatchError,
    UnknownFormatError,
    VariantMismatchError,
    cap,
)
from .tasks import TASKS, Task, expected_shapes, get_task, param_kind

BN_PARAMS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


# ------------------------------------------------------------------------------------ layouts
# A layout returns the format's module name for a role; a tuple of names stands for Linears whose
# weights are concatenated into ours (Hugging Face's separate query, key and value).
def _deeplabv3_head(role, aspp: str, pool: str, classifier: str) -> str | None:
    """DeepLabV3's head in ml-cvnets' structure (which transformers ported): the module ``aspp`` holds ``convs``
    (the 1x1, the atrous and the image-pooling branches, whose conv is ``pool`` inside it) and ``project``."""
    match role:
        case ("aspp", i):
            return f"{aspp}.convs.{i}"
        case ("aspp_pool", i):
            return f"{aspp}.convs.{i}.{pool}"
        case ("aspp_project",):
            return f"{aspp}.project"
        case ("seg_classifier",):
            return classifier
    return None


def _mmpretrain(role) -> str | None:
    match role:
        case ("stem",):
            return "backbone.stem"
        case ("ir", i, j, part, expand):  # InvertedResidual.conv = Sequential([expand], dw, project)
            k = {"expand": 0, "dw": 1 if expand else 0, "project": 2 if expand else 1}[part]
            return f"backbone.layers.{i}.{j}.conv.{k}"
        case ("vit", i, name):
            base = f"backbone.layers.{i}.1"
            return {"conv_local": f"{base}.local_rep.0", "conv_in": f"{base}.local_rep.1.conv",
                    "conv_proj": f"{base}.conv_proj", "conv_fusion": f"{base}.conv_fusion"}[name]
        case ("tf", i, k, part):  # global_rep = Sequential(L transformer layers, LayerNorm)
            return f"backbone.layers.{i}.1.global_rep.{k}" + {
                "norm1": ".ln1", "attn.qkv": ".attn.qkv", "attn.proj": ".attn.proj", "norm2": ".ln2",
                "mlp.fc1": ".ffn.layers.0.0", "mlp.fc2": ".ffn.layers.1", "norm": ""}[part]
        case ("exp",):
            return "backbone.conv_1x1_exp"
        case ("head",):
            return "head.fc"
    return None


def _cvnets(role) -> str | None:
    match role:
        case ("backbone", inner):  # SegEncoderDecoder.encoder
            return "encoder." + _cvnets(inner)
        case ("stem",):
            return "conv_1"
        case ("ir", i, j, part, _):
            name = {"expand": "exp_1x1", "dw": "conv_3x3", "project": "red_1x1"}[part]
            return f"layer_{i + 1}.{j}.block.{name}"
        case ("vit", i, name):
            base = f"layer_{i + 1}.1"
            return {"conv_local": f"{base}.local_rep.conv_3x3", "conv_in": f"{base}.local_rep.conv_1x1.block.conv",
                    "conv_proj": f"{base}.conv_proj", "conv_fusion": f"{base}.fusion"}[name]
        case ("tf", i, k, part):  # global_rep = Sequential(L transformer layers, LayerNorm)
            return f"layer_{i + 1}.1.global_rep.{k}" + {
                "norm1": ".pre_norm_mha.0", "attn.qkv": ".pre_norm_mha.1.qkv_proj",
                "attn.proj": ".pre_norm_mha.1.out_proj", "norm2": ".pre_norm_ffn.0",
                "mlp.fc1": ".pre_norm_ffn.1", "mlp.fc2": ".pre_norm_ffn.4", "norm": ""}[part]
        case ("exp",):
            return "conv_1x1_exp"
        case ("head",):
            return "classifier.fc"
    return _deeplabv3_head(role, "seg_head.aspp.aspp_layer", "aspp_pool.conv_1x1", "seg_head.classifier.block.conv")


def _timm(role) -> str | None:
    match role:
        case ("stem",):
            return "stem"
        case ("ir", i, j, part, _):
            name = {"expand": "conv1_1x1", "dw": "conv2_kxk", "project": "conv3_1x1"}[part]
            return f"stages.{i}.{j}.{name}"
        case ("vit", i, name):
            return f"stages.{i}.1." + {"conv_local": "conv_kxk", "conv_in": "conv_1x1", "conv_proj": "conv_proj",
                                       "conv_fusion": "conv_fusion"}[name]
        case ("tf", i, _, "norm"):
            return f"stages.{i}.1.norm"
        case ("tf", i, k, part):
            return f"stages.{i}.1.transformer.{k}.{part}"
        case ("exp",):
            return "final_conv"
        case ("head",):
            return "head.fc"
    return None


def _huggingface(role) -> str | tuple[str, ...] | None:
    match role:
        case ("backbone", inner):  # MobileViTForSemanticSegmentation.mobilevit, the classifier's own prefix
            return _huggingface(inner)
        case ("stem",):
            return "mobilevit.conv_stem"
        case ("ir", i, j, part, _):
            name = {"expand": "expand_1x1", "dw": "conv_3x3", "project": "reduce_1x1"}[part]
            if i >= 2:  # MobileViTLayer: the strided inverted residual is its downsampling_layer
                return f"mobilevit.encoder.layer.{i}.downsampling_layer.{name}"
            return f"mobilevit.encoder.layer.{i}.layer.{j}.{name}"
        case ("vit", i, name):
            return f"mobilevit.encoder.layer.{i}." + {
                "conv_local": "conv_kxk", "conv_in": "conv_1x1.convolution", "conv_proj": "conv_projection",
                "conv_fusion": "fusion"}[name]
        case ("tf", i, _, "norm"):
            return f"mobilevit.encoder.layer.{i}.layernorm"
        case ("tf", i, k, part):
            base = f"mobilevit.encoder.layer.{i}.transformer.layer.{k}"
            if part == "attn.qkv":
                return tuple(f"{base}.attention.attention.{n}" for n in ("query", "key", "value"))
            return f"{base}." + {"norm1": "layernorm_before", "attn.proj": "attention.output.dense",
                                 "norm2": "layernorm_after", "mlp.fc1": "intermediate.dense",
                                 "mlp.fc2": "output.dense"}[part]
        case ("exp",):
            return "mobilevit.conv_1x1_exp"
        case ("head",):
            return "classifier"
    return _deeplabv3_head(role, "segmentation_head.aspp", "conv_1x1", "segmentation_head.classifier.convolution")


@dataclass(frozen=True)
class Format:
    """A public checkpoint layout (which tasks a library publishes in it: :attr:`.tasks.Task.formats`)."""

    name: str
    module: Callable  # role -> module name (see the comment above the layouts)
    conv: str  # child holding the conv weight inside a conv+norm unit
    bn: str  # child holding the BatchNorm inside a conv+norm unit
    ignored: tuple[str, ...]  # key prefixes of training-only modules, dropped before remapping
    source: str


FORMATS: dict[str, Format] = {
    "mmpretrain": Format("mmpretrain", _mmpretrain, "conv", "bn", (),
                         "open-mmlab/mmpretrain mmpretrain/models/backbones/mobilevit.py"),
    "cvnets": Format("cvnets", _cvnets, "block.conv", "block.norm", ("seg_head.aux_head.",),
                     "apple/ml-cvnets cvnets/models/classification/mobilevit.py, "
                     "cvnets/models/segmentation/enc_dec.py, heads/deeplabv3.py"),
    "timm": Format("timm", _timm, "conv", "bn", (), "huggingface/pytorch-image-models timm/models/mobilevit.py"),
    "huggingface": Format("huggingface", _huggingface, "convolution", "normalization", (),
                          "huggingface/transformers src/transformers/models/mobilevit/modeling_mobilevit.py"),
}


def _format_of(task: Task, fmt_name: str) -> Format:
    if fmt_name not in task.formats:
        raise UnknownFormatError(f"{fmt_name!r} is not a {task.name} checkpoint format; choose one of: "
                                 f"{', '.join(task.formats)} (or 'ours')")
    return FORMATS[fmt_name]


def key_map(fmt_name: str, cfg, *, task: str | Task = "classification") -> dict[str, str | tuple[str, ...]]:
    """Our state-dict key -> the format's key (a tuple of keys for HF's separate q/k/v) for ``task``'s ``cfg``."""
    task = get_task(task)
    fmt = _format_of(task, fmt_name)
    out: dict[str, str | tuple[str, ...]] = {}
    for ours, role in task.units(cfg):
        theirs = fmt.module(role)
        kind = param_kind(role)
        if kind == "conv_bn":
            out[f"{ours}.conv.weight"] = f"{theirs}.{fmt.conv}.weight"
            for p in BN_PARAMS:
                out[f"{ours}.bn.{p}"] = f"{theirs}.{fmt.bn}.{p}"
            continue
        for p in ("weight",) if kind == "weight" else ("weight", "bias"):
            out[f"{ours}.{p}"] = tuple(f"{t}.{p}" for t in theirs) if isinstance(theirs, tuple) else f"{theirs}.{p}"
    return out


# --------------------------------------------------------------------------------- remapping
class Remapped(NamedTuple):
    state_dict: dict[str, torch.Tensor]  # our keys
    missing: list[str]  # the format's keys that the checkpoint lacks
    unexpected: list[str]  # checkpoint keys that nothing maps
    sources: dict[str, str]  # our key -> the checkpoint key(s) it came from, for messages


def _best_format(sd: dict[str, torch.Tensor], task: Task) -> str | None:
    """The format whose markers most keys of ``sd`` carry (``ours`` first on a tie), None when none does."""
    def hits(markers):
        return sum(any(m in k for m in markers) for k in sd)

    scores = {"ours": hits(task.our_markers)} | {name: hits(markers) for name, markers in task.formats.items()}
    best = max(scores, key=scores.get)
    return best if scores[best] else None


def detect_format(sd: dict[str, torch.Tensor], task: str | Task = "classification") -> str:
    """``ours`` or a format of ``task``, from characteristic key names.

    Raises :class:`TaskMismatchError` for a checkpoint of another task (e.g. a classifier given for
    segmentation) and :class:`UnknownFormatError` for anything else.
    """
    task = get_task(task)
    found = _best_format(sd, task)
    if found is not None:
        return found
    for other in TASKS.values():
        theirs = _best_format(sd, other) if other is not task else None
        if theirs is not None:
            raise TaskMismatchError(
                f"this is a MobileViT {other.name} checkpoint ({theirs} format), not a {task.name} one: load it "
                f"with task={other.name!r} (export: --task {other.name}), or pass {task.expected}")
    v2 = any("pre_norm_attn" in k or "mobilevitv2" in k for k in sd)
    hint = " It looks like MobileViT v2, which this toolkit does not implement." if v2 else ""
    raise UnknownFormatError(f"unknown {task.name} checkpoint format (first keys: {cap(list(sd)[:5])}).{hint} "
                             f"Expected {task.expected}")


def remap(sd: dict[str, torch.Tensor], fmt_name: str, cfg, *, task: str | Task = "classification") -> Remapped:
    """Pure: a state dict of ``task`` in ``fmt_name``'s naming -> ours for ``cfg``, with what was missing or
    left over (training-only keys of the format dropped)."""
    task = get_task(task)
    if fmt_name == "ours":
        want = expected_shapes(task, cfg.name, cfg.num_classes)
        out = {k: torch.tensor(0, dtype=torch.long) for k in want if k.endswith("num_batches_tracked")}
        out.update(sd)  # zeros only where the file has no num_batches_tracked
        missing = [k for k in want if k not in out]
        return Remapped(out, missing, [k for k in sd if k not in want], {k: k for k in sd})
    fmt = _format_of(task, fmt_name)
    kept = {k: v for k, v in sd.items() if not k.startswith(fmt.ignored)} if fmt.ignored else sd
    return _apply_key_map(kept, key_map(fmt_name, cfg, task=task))


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


def _shape_problems(task: Task, r: Remapped, variant: str) -> list[str]:
    want = expected_shapes(task, variant, task.num_classes(r.state_dict))
    return [f"{k} (checkpoint key {r.sources.get(k, k)}): checkpoint {tuple(v.shape)} vs model {want[k]}"
            for k, v in r.state_dict.items() if k in want and tuple(v.shape) != want[k]]


class Converted(NamedTuple):
    state_dict: dict[str, torch.Tensor]
    format: str
    variant: str
    num_classes: int


def _resolve_variant(task: Task, variant: str | None) -> str | None:
    if variant is None:
        return None
    try:
        return task.config(variant).name
    except UnknownVariantError as e:
        raise VariantMismatchError(str(e)) from e


def convert_state_dict(sd: dict[str, torch.Tensor], fmt_name: str | None = None, variant: str | None = None,
                       where: str = "", *, task: str | Task = "classification") -> Converted:
    """Detect format (unless given) and variant (checked against ``variant`` if given); remap to ours.

    Raises :class:`TaskMismatchError`, :class:`UnknownFormatError`, :class:`KeyMismatchError`,
    :class:`ShapeMismatchError` or :class:`VariantMismatchError`; ``where`` (a file name) starts their messages.
    """
    task = get_task(task)
    fmt_name = fmt_name or detect_format(sd, task)
    asked = _resolve_variant(task, variant)
    # All variants share one key layout (2/4/3 transformer layers); shapes tell them apart.
    results = {name: remap(sd, fmt_name, cfg, task=task) for name, cfg in task.variants.items()}
    name = _choose_variant(task, results, asked, fmt_name, f"{where}: " if where else "")
    ours = results[name].state_dict
    return Converted(ours, fmt_name, name, task.num_classes(ours))


def _choose_variant(task: Task, results: dict[str, Remapped], asked: str | None, fmt_name: str, where: str) -> str:
    """The variant whose key layout and shapes the checkpoint fits (``asked`` if given), or the typed error.

    ``results``: the checkpoint remapped for each variant; shapes are compared only once the keys fit.
    """
    first = results[asked or next(iter(results))]
    if first.missing or first.unexpected:
        parts = [f"{where}the {fmt_name} checkpoint does not fit {task.model}"]
        if first.missing:
            parts.append(f"missing keys: {cap(first.missing)}")
        if first.unexpected:
            parts.append(f"unexpected keys: {cap(first.unexpected)}")
        parts.append(task.keys_hint)
        raise KeyMismatchError("; ".join(parts), first.missing, first.unexpected)
    problems = {name: _shape_problems(task, r, name) for name, r in results.items()}
    fits = [name for name, p in problems.items() if not p]
    if asked is not None and asked not in fits and fits:
        raise VariantMismatchError(
            f"{where}the checkpoint holds {task.family} {fits[0]} weights ({fmt_name} format), "
            f"not {asked}: pass --variant {fits[0]} (or no variant, it is detected)")
    if not fits:
        closest = min(problems, key=lambda k: len(problems[k]))
        name = asked or closest
        raise ShapeMismatchError(
            f"{where}the {fmt_name} checkpoint matches no {task.model} variant; "
            f"it looks most like {closest}. "
            f"{len(problems[name])} shape mismatches against {name}: {cap(problems[name])}. "
            f"Check that the file is an unmodified {task.model} checkpoint")
    return asked or fits[0]


# ------------------------------------------------------------------ one pure function per format
def _from(fmt_name: str, sd: dict[str, torch.Tensor], variant: str | None,
          task: str | Task) -> dict[str, torch.Tensor]:
    task = get_task(task)
    found = detect_format(sd, task)
    if found == "ours" and fmt_name != "ours":  # nothing to remap
        return sd
    if found != fmt_name:
        raise UnknownFormatError(f"this is a {found} {task.name} state dict, not {fmt_name}: use from_{found}, "
                                 "or convert_state_dict to detect the format")
    out = convert_state_dict(sd, fmt_name, variant, task=task).state_dict
    return sd if out.keys() == sd.keys() and fmt_name == "ours" else out


def from_mmpretrain(sd: dict[str, torch.Tensor], variant: str | None = None, *,
                    task: str | Task = "classification") -> dict[str, torch.Tensor]:
    """mmpretrain ``state_dict`` (``backbone.*``, ``head.fc.*``) -> ours."""
    return _from("mmpretrain", sd, variant, task)


def from_cvnets(sd: dict[str, torch.Tensor], variant: str | None = None, *,
                task: str | Task = "classification") -> dict[str, torch.Tensor]:
    """Apple ml-cvnets state dict -> ours: a classifier (``conv_1.block.*``, ``layer_1..5``, ``classifier.fc.*``)
    or DeepLabV3 (``encoder.*``, ``seg_head.*``; the training-only ``aux_head`` dropped)."""
    return _from("cvnets", sd, variant, task)


def from_timm(sd: dict[str, torch.Tensor], variant: str | None = None, *,
              task: str | Task = "classification") -> dict[str, torch.Tensor]:
    """timm ByobNet state dict (``stem``, ``stages``, ``final_conv``, ``head.fc``) -> ours."""
    return _from("timm", sd, variant, task)


def from_huggingface(sd: dict[str, torch.Tensor], variant: str | None = None, *,
                     task: str | Task = "classification") -> dict[str, torch.Tensor]:
    """transformers ``MobileViTForImageClassification`` or ``MobileViTForSemanticSegmentation`` state dict ->
    ours (q/k/v fused into qkv)."""
    return _from("huggingface", sd, variant, task)


def from_ours(sd: dict[str, torch.Tensor], variant: str | None = None, *,
              task: str | Task = "classification") -> dict[str, torch.Tensor]:
    """Our own state dict, checked against the variant's keys and shapes: returned as is when complete, with
    zero ``num_batches_tracked`` added where a stripped file lacks them."""
    return _from("ours", sd, variant, task)


def to_format(state_dict: dict[str, torch.Tensor], fmt_name: str, cfg, *,
              task: str | Task = "classification") -> dict[str, torch.Tensor]:
    """Pure inverse of :func:`remap`: our state dict in a public format's naming (HF q/k/v split)."""
    out = {}
    for ours, theirs in key_map(fmt_name, cfg, task=task).items():
        if isinstance(theirs, tuple):
            for key, chunk in zip(theirs, state_dict[ours].chunk(len(theirs))):
                out[key] = chunk.clone()
        else:
            out[theirs] = state_dict[ours].clone()
    return out
