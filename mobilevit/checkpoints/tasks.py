"""The tasks a checkpoint can hold, one :class:`Task` record each: ImageNet classification and DeepLabV3 segmentation.

A record is all that differs between the tasks: the variant table, our modules in order (as *roles*, which
:mod:`.formats` names in each public layout), the formats that publish the task with the key infixes that
identify them, and the classifier whose rows count the classes. Detection, remapping, conversion and loading
are written once and take the record.

Roles name our modules independently of our attribute names::

    ("stem",) / ("exp",) / ("head",)          the stem, the 1x1 expansion before pooling, the Linear classifier
    ("ir", stage, block, part, has_expand)    an inverted residual's conv; part: expand | dw | project
    ("vit", stage, part)                      a MobileViT block's conv; part: conv_local | conv_in | conv_proj
                                              | conv_fusion
    ("tf", stage, layer, part)                a transformer layer's module; part: norm1 | attn.qkv | attn.proj
                                              | norm2 | mlp.fc1 | mlp.fc2; ("tf", stage, L, "norm") is the
                                              LayerNorm after the L layers
    ("backbone", role)                        a classifier's role inside a segmentation model's backbone
    ("aspp", i) / ("aspp_pool", i)            DeepLabV3's ASPP branches: 1x1 (i = 0), atrous (1..3), and the
                                              image pooling one (the i-th of ASPP's convs)
    ("aspp_project",) / ("seg_classifier",)   ASPP's projection and the 1x1 classifier
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Callable, Iterator, Mapping

import torch
from torch import nn

from ..config import SEGMENTATION_VARIANTS, VARIANTS, StageKind, get_config, get_segmentation_config
from ..model import MobileViT
from ..segmentation import MobileViTSegmentation

TF_PARTS = ("norm1", "attn.qkv", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2")


class UnknownTaskError(ValueError):
    """A task name that no record has."""


@dataclass(frozen=True, eq=False)  # one record per task, compared (and cached) by identity
class Task:
    """What checkpoint import needs to know about one task."""

    name: str  # "classification" | "segmentation", as export's --task
    model: str  # the architecture, in messages: "MobileViT v1"
    family: str  # what its variants are called, in messages: "MobileViT" x_small
    variants: Mapping[str, Any]  # variant name -> config: the task's table in mobilevit.config
    config: Callable[..., Any]  # (variant, **overrides) -> config; refuses an unknown name
    model_class: type[nn.Module]  # built from one config (and build options such as patches)
    units: Callable[[Any], Iterator[tuple[str, tuple]]]  # config -> (our module, role), in our model's order
    formats: Mapping[str, tuple[str, ...]]  # public format -> key infixes only its checkpoints of this task have
    our_markers: tuple[str, ...]  # the same for our own names
    head: str  # our key of the classifier's weight: one row (output channel) per class
    architecture: tuple[str, ...]  # config fields a Hugging Face config.json states but no tensor shows
    expected: str  # the checkpoints this task reads, for "unknown format" messages
    keys_hint: str  # the fix when a recognised format has missing or unexpected keys

    def num_classes(self, sd: dict[str, torch.Tensor]) -> int:
        """The class count of our state dict ``sd`` (the table's default when it has no head)."""
        w = sd.get(self.head)
        return int(w.shape[0]) if w is not None and w.dim() > 1 else next(iter(self.variants.values())).num_classes

    def build(self, variant: str, num_classes: int, architecture: Mapping[str, Any] | None = None,
              **options) -> nn.Module:
        """The task's model for ``variant`` (``options`` go to its constructor, e.g. ``patches``)."""
        return self.model_class(self.config(variant, num_classes=num_classes, **(architecture or {})), **options)


@lru_cache(maxsize=None)
def expected_shapes(task: Task, variant: str, num_classes: int) -> dict[str, tuple[int, ...]]:
    """Our state dict's keys and shapes for ``variant`` with ``num_classes`` (built on the meta device)."""
    with torch.device("meta"):
        model = task.build(variant, num_classes)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def param_kind(role: tuple) -> str:
    """What parameters our module for ``role`` has: ``conv_bn`` (``conv.weight`` and ``bn.*``),
    ``weight`` (a bias-free conv) or ``weight_bias`` (a Linear, a LayerNorm or a conv with bias)."""
    match role:
        case ("backbone", inner):
            return param_kind(inner)
        case ("vit", _, "conv_in"):
            return "weight"
        case ("tf", *_) | ("head",) | ("seg_classifier",):
            return "weight_bias"
    return "conv_bn"


def _backbone_units(cfg) -> Iterator[tuple[str, tuple]]:
    """(our module, role) for the stem and the five stages of a MobileViT config."""
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
                for part in TF_PARTS:
                    yield f"{b}.transformer.{k}.{part}", ("tf", i, k, part)
            yield f"{b}.norm", ("tf", i, stage.num_layers, "norm")
            yield f"{b}.conv_proj", ("vit", i, "conv_proj")
            yield f"{b}.conv_fusion", ("vit", i, "conv_fusion")


def _classifier_units(cfg) -> Iterator[tuple[str, tuple]]:
    yield from _backbone_units(cfg)
    yield "conv_exp", ("exp",)
    yield "head", ("head",)


def _segmentation_units(cfg) -> Iterator[tuple[str, tuple]]:
    """The backbone (no expansion conv, no classifier) under ``backbone.``, then DeepLabV3's head."""
    for ours, role in _backbone_units(cfg.backbone):
        yield f"backbone.{ours}", ("backbone", role)
    n = 1 + len(cfg.atrous_rates)
    for i in range(n):
        yield f"head.aspp.convs.{i}", ("aspp", i)
    yield "head.aspp.pool.proj", ("aspp_pool", n)
    yield "head.aspp.project", ("aspp_project",)
    yield "head.classifier", ("seg_classifier",)


CLASSIFICATION = Task(
    name="classification", model="MobileViT v1", family="MobileViT", variants=VARIANTS, config=get_config,
    model_class=MobileViT, units=_classifier_units,
    formats={"mmpretrain": ("backbone.stem.conv.", "backbone.layers."),
             "cvnets": ("conv_1.block.", "layer_1.0.block."),
             "timm": ("final_conv.conv.", ".conv1_1x1.", ".conv2_kxk.", ".conv3_1x1."),
             "huggingface": ("mobilevit.conv_stem.", "mobilevit.encoder.")},
    our_markers=("conv_exp.conv.", ".dw.conv.", ".conv_local.conv."), head="head.weight", architecture=(),
    expected="MobileViT v1 classification weights from mmpretrain, ml-cvnets, timm, Hugging Face, or this toolkit",
    keys_hint="pass a complete MobileViT v1 classification checkpoint (not v2, not a backbone-only or "
              "detection/segmentation model)")

SEGMENTATION = Task(
    name="segmentation", model="DeepLabV3-MobileViT", family="DeepLabV3-MobileViT", variants=SEGMENTATION_VARIANTS,
    config=get_segmentation_config, model_class=MobileViTSegmentation, units=_segmentation_units,
    formats={"huggingface": ("segmentation_head.aspp.",), "cvnets": ("seg_head.aspp.aspp_layer.",)},
    our_markers=("head.aspp.pool.proj.", "backbone.stages."), head="head.classifier.weight",
    architecture=("output_stride", "atrous_rates"),  # no tensor shape shows them, yet they change the output
    expected="DeepLabV3-MobileViT weights from ml-cvnets (deeplabv3_mobilevit_*.pt), Hugging Face "
             "(MobileViTForSemanticSegmentation, apple/deeplabv3-mobilevit-*) or this toolkit",
    keys_hint="pass a complete DeepLabV3-MobileViT v1 checkpoint (ml-cvnets deeplabv3_mobilevit_*.pt or Hugging "
              "Face MobileViTForSemanticSegmentation)")

TASKS: dict[str, Task] = {t.name: t for t in (CLASSIFICATION, SEGMENTATION)}


def get_task(task: str | Task) -> Task:
    """The record of ``task`` (a name of :data:`TASKS`, or a record, returned as is)."""
    if isinstance(task, Task):
        return task
    if task not in TASKS:
        raise UnknownTaskError(f"unknown task {task!r}; choose one of: {', '.join(TASKS)}")
    return TASKS[task]
