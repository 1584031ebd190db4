"""Loading a checkpoint of either task: read the file safely, detect format and variant, remap, build the model."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from .errors import CheckpointError, UnknownFormatError, VariantMismatchError
from .formats import convert_state_dict
from .io import (
    OUR_FORMAT,
    OUR_FORMAT_VERSION,
    check_finite,
    huggingface_class_names,
    huggingface_config,
    read_file,
    resolve_path,
    sha256_file,
    unwrap,
)
from .tasks import Task, get_task


@dataclass
class LoadedCheckpoint:
    state_dict: dict[str, torch.Tensor]  # our keys, ready for the task's model.load_state_dict(strict=True)
    format: str  # "ours" or a format of the task (formats.FORMATS)
    variant: str
    num_classes: int
    class_names: list[str] | None
    origin: str
    sha256: str
    extra: dict = field(default_factory=dict)  # our format's free-form metadata
    # Architecture the file states but its tensors cannot show (config fields of Task.architecture, e.g.
    # segmentation's output_stride and atrous_rates, from a Hugging Face config.json); empty for the defaults.
    architecture: dict = field(default_factory=dict)


def _architecture(task: Task, config: dict, path: Path, variant: str) -> dict:
    """The fields of ``task.architecture`` that a Hugging Face ``config`` states, checked by building the config."""
    out = {}
    try:
        for key in (k for k in task.architecture if k in config):
            value = config[key]
            out[key] = tuple(int(v) for v in value) if isinstance(value, list) else int(value)
        task.config(variant, **out)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path.parent / 'config.json'}: {e}") from e
    return out


def load_checkpoint(path: str | Path, variant: str | None = None, *,
                    task: str | Task = "classification") -> LoadedCheckpoint:
    """Read a checkpoint of ``task`` in any supported format (a file, or a Hugging Face folder), detect format and
    variant, remap to our keys.

    From a Hugging Face folder's ``config.json`` come the class names (``id2label``, when real ones) and the
    architecture no tensor shows (``architecture``); from our format, its saved metadata.
    """
    task = get_task(task)
    path = resolve_path(path)
    raw = read_file(path)
    meta = raw if isinstance(raw, dict) and raw.get("format") == OUR_FORMAT else {}
    if meta and meta.get("format_version", 0) > OUR_FORMAT_VERSION:
        raise UnknownFormatError(
            f"{path} is format version {meta['format_version']} of {OUR_FORMAT}; this toolkit reads up to "
            f"{OUR_FORMAT_VERSION}: update the toolkit")
    sd = unwrap(raw, path)
    check_finite(sd, str(path))
    conv = convert_state_dict(sd, variant=variant, where=path.name, task=task)
    class_names, architecture = meta.get("class_names"), {}
    if conv.format == "huggingface":
        config = huggingface_config(path)
        class_names = huggingface_class_names(config, conv.num_classes)
        architecture = _architecture(task, config, path, conv.variant)
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
                            dict(meta.get("extra") or {}), architecture)


def load_model(path: str | Path, variant: str | None = None, patches: str = "reference", *,
               task: str | Task = "classification", **options) -> nn.Module:
    """The task's model (:class:`~mobilevit.model.MobileViT` or :class:`~mobilevit.segmentation.MobileViTSegmentation`)
    holding the checkpoint's weights (strict load), in eval mode; ``options`` go to its constructor (e.g.
    ``upsample=True`` for segmentation)."""
    task = get_task(task)
    ckpt = load_checkpoint(path, variant, task=task)
    model = task.build(ckpt.variant, ckpt.num_classes, ckpt.architecture, patches=patches, **options)
    model.load_state_dict(ckpt.state_dict, strict=True)
    return model.eval()
