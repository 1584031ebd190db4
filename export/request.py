"""What the user asked for, resolved and checked before any work: the request stage of an export.

``resolve`` fills the target's defaults and refuses anything the exporter cannot honour; then the
model, its labels and the real photos for validation and calibration are loaded from it.
"""
from __future__ import annotations

import functools
import sys
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from mobilevit import DEFAULT_SIZE, MobileViT, get_config
from mobilevit.config import SEGMENTATION_SIZE
from mobilevit.model import ATTENTION_LAYOUTS
from mobilevit.patches import get_strategy

from .config import check_precision, check_sizes, target_config
from .convert import CALIBRATION_IMAGES, calibration_photos
from .errors import ExportConfigError
from .tasks import SEGMENTATION_OUTPUTS, SEGMENTATION_VALIDATION_IMAGES

# How many real photos each artifact is validated on (a seed apart from the calibration photos).
VALIDATION_IMAGES = 16
VALIDATION_SEED = 1
# the files of a user's --images folder the export reads, the first by path: validation's, then calibration's
USER_PHOTOS = VALIDATION_IMAGES + CALIBRATION_IMAGES
SEARCH_SEED = 7  # the views the int8 search is measured on (not VALIDATION_SEED's)
DYNAMIC_HW_SIZES = (128, 192, 320, 384)  # extra sizes a dynamic-H/W ONNX model is validated at


@dataclass(frozen=True)
class ExportRequest:
    """Everything the CLI can ask for; ``None`` means the target's default."""

    target: str
    variant: str | None = "small"  # None: the checkpoint's own variant (or small without --weights)
    weights: str | None = None
    precisions: tuple[str, ...] = ()
    patches: str | None = None
    attention: str | None = None  # batched | split
    sizes: tuple[int, ...] = ()  # () = the task's size: 256 for classification, 512 for segmentation
    out: Path = Path("artifacts")
    force: bool = False
    input_kind: str = "image"  # Core ML: image | tensor
    # classification: Core ML classifier | logits; segmentation (any target): logits | classmap
    # (None = classifier / Core ML classmap, logits elsewhere)
    output_kind: str | None = None
    dynamic_hw: bool = False  # ONNX: symbolic height/width
    images: str | None = None  # folder of the user's own photos for validation/calibration
    float_kinds: tuple[str, ...] | None = None  # int8: layer kinds kept in float (None: the target's recipe)
    int8_budget: str | None = None  # int8: search the float layers under this budget (export.int8search)
    int8_objective: str | None = None  # what that search maximises: speed (measured here) | macs; None: the target's
    task: str = "classification"  # classification | segmentation (DeepLabV3-MobileViT; export.tasks)
    options: tuple[tuple[str, object], ...] = ()  # the target's own options by name (CLI: --option KEY=VALUE)

    @property
    def segmentation(self) -> bool:
        return self.task == "segmentation"

    def target_options(self) -> dict:
        """The keyword options this request passes to ``export.convert``: the generic fields its target takes
        (``TargetConfig.request_fields``), then its own ``--option KEY=VALUE`` ones."""
        options = {f: getattr(self, f) for f in target_config(self.target).request_fields}
        if "output_kind" in options:
            options["output_kind"] = options["output_kind"] or "classifier"
        options.update(dict(self.options))
        if self.float_kinds is not None:
            options["float_kinds"] = tuple(self.float_kinds)
        if self.int8_budget is not None:
            options["int8_budget"] = self.int8_budget
        if self.int8_objective is not None:
            options["int8_objective"] = self.int8_objective
        return options


@dataclass
class Weights:
    """Where the exported weights came from, for the manifest and the model card."""

    origin: str
    synthetic: bool
    sha256: str | None = None
    format: str | None = None
    class_names: tuple[str, ...] | None = None

    def to_dict(self) -> dict:
        return {"origin": self.origin, "synthetic": self.synthetic, "sha256": self.sha256, "format": self.format}


def say(msg: str) -> None:
    print(f"[export] {msg}", file=sys.stderr, flush=True)


def resolve(req: ExportRequest) -> ExportRequest:
    """Fill target defaults and refuse anything the exporter cannot honour, before any work."""
    from .tasks import check_segmentation_precision, check_task, segmentation_precisions

    check_task(req.task)
    known = ("classifier", *SEGMENTATION_OUTPUTS)
    if req.output_kind is not None and req.output_kind not in known:
        raise ExportConfigError(f"unknown output kind {req.output_kind!r}; choose one of: {', '.join(known)}")
    cfg = target_config(req.target)
    if req.variant is None:
        from mobilevit.checkpoints import load_checkpoint

        req = replace(req, variant=load_checkpoint(req.weights, task=req.task).variant if req.weights else "small")
    req = replace(req, variant=get_config(req.variant).name)
    if req.segmentation:
        precisions = tuple(dict.fromkeys(req.precisions or segmentation_precisions(req.target)))
        for p in precisions:
            check_precision(req.target, p)
            check_segmentation_precision(req.target, p)
        output_kind = req.output_kind or cfg.segmentation_output
        if output_kind not in SEGMENTATION_OUTPUTS:
            raise ExportConfigError(f"a segmentation model outputs {' or '.join(SEGMENTATION_OUTPUTS)}, "
                                    f"not {output_kind!r}: pass --output logits or --output classmap")
        if len(req.sizes) > 1 or req.dynamic_hw or req.float_kinds is not None or req.int8_budget is not None:
            raise ExportConfigError("segmentation is exported at one fixed size (--size N, default "
                                    f"{SEGMENTATION_SIZE}), without --dynamic-hw, --float-kinds or --int8-budget")
    else:
        precisions = tuple(dict.fromkeys(req.precisions or (cfg.default_precision,)))
        for p in precisions:
            check_precision(req.target, p)
        output_kind = req.output_kind or "classifier"
        if output_kind not in ("classifier", "logits") or (
                output_kind == "logits" and "output_kind" not in cfg.request_fields):
            raise ExportConfigError(f"--output {output_kind} is not a classification output of {req.target}; "
                                    f"{_takers('output_kind')} take classifier or logits (--output classmap is for "
                                    "--task segmentation)")
    patches = get_strategy(req.patches or cfg.default_patches).name
    attention = req.attention or cfg.default_attention
    if attention not in ATTENTION_LAYOUTS:
        raise ExportConfigError(
            f"unknown attention layout {attention!r}; choose one of: {', '.join(ATTENTION_LAYOUTS)}")
    sizes = check_sizes(req.target, tuple(req.sizes) or (task_size(req),))
    if req.dynamic_hw and "dynamic_hw" not in cfg.request_fields:
        raise ExportConfigError(f"--dynamic-hw applies to {_takers('dynamic_hw')} only, not {req.target}")
    if req.input_kind != "image" and "input_kind" not in cfg.request_fields:
        raise ExportConfigError(f"--input {req.input_kind} applies to {_takers('input_kind')} only, not {req.target}")
    if req.dynamic_hw and sizes[0] % 64:
        raise ExportConfigError(f"--dynamic-hw needs --size to be a multiple of 64 (e.g. {DEFAULT_SIZE})")
    from .convert import target_options

    req = replace(req, precisions=precisions, patches=patches, attention=attention, sizes=sizes, out=Path(req.out),
                  output_kind=output_kind)
    # refuses bad option values (and float_kinds for a precision that is not int8) now, not after loading
    target_options(req.target, req.target_options(), precisions)
    if req.int8_budget is not None and not req.images:
        from .int8search import TOP1_NEEDS, parse_budget

        if parse_budget(req.int8_budget).metric == "top1":
            raise ExportConfigError(f"--int8-budget {req.int8_budget}: {TOP1_NEEDS}")
    if req.images:  # an unreadable photo is bad input: refuse it now, naming the file, before any work
        user_photos(req.images)
    return req


def user_photos(folder: str | Path) -> list[np.ndarray]:
    """The first ``USER_PHOTOS`` photos of the user's ``--images`` folder, decoded once
    per process (checking the request, validation at every size and calibration all read this one decode)."""
    folder = Path(folder).resolve()
    files = sorted(p for p in folder.rglob("*") if p.is_file()) if folder.is_dir() else []
    stamp = tuple((str(p), p.stat().st_mtime_ns) for p in files)  # a changed folder is decoded again
    return list(_decoded(str(folder), stamp))


@functools.lru_cache(maxsize=1)
def _decoded(folder: str, stamp: tuple) -> tuple[np.ndarray, ...]:
    from data.photos import load_folder

    return tuple(load_folder(folder, limit=USER_PHOTOS))


def _takers(field_name: str) -> str:
    """The registered targets whose options take the request field ``field_name``."""
    from .config import TARGETS

    return ", ".join(t.name for t in TARGETS.values() if field_name in t.request_fields)


def task_size(req: ExportRequest) -> int:
    """The input size of the task's public weights: 256 for the classifiers, 512 for segmentation."""
    return SEGMENTATION_SIZE if req.segmentation else DEFAULT_SIZE


def artifact_stem(req: ExportRequest) -> str:
    """``mobilevit_<variant>`` for a classifier, ``deeplabv3_mobilevit_<variant>`` for segmentation."""
    return f"{'deeplabv3_' if req.segmentation else ''}mobilevit_{req.variant}"


def destination(req: ExportRequest, precision: str) -> Path:
    extra = "" if req.sizes == (task_size(req),) else "_" + "-".join(str(s) for s in req.sizes)
    return req.out / f"{artifact_stem(req)}_{req.target}_{precision}{extra}"


def load_model(req: ExportRequest) -> tuple[MobileViT, Weights]:
    """The model to export (with the request's patches and attention) and where its weights came from: the
    checkpoint's, or calibrated synthetic weights, announced loudly. Segmentation: a DeepLabV3-MobileViT."""
    from data.synthetic import synthetic_model, synthetic_segmentation_model
    from mobilevit import checkpoints
    from mobilevit.synthetic import SYNTHETIC_ORIGIN

    what = f"{'DeepLabV3-' if req.segmentation else ''}MobileViT {req.variant}"
    if req.weights:
        ckpt = checkpoints.load_checkpoint(req.weights, task=req.task)
        if ckpt.variant != req.variant:
            raise checkpoints.CheckpointError(
                f"{req.weights} holds {what.rsplit(' ', 1)[0]} {ckpt.variant} weights ({ckpt.format} format) but "
                f"--variant is {req.variant}: pass --variant {ckpt.variant}")
        model = checkpoints.load_model(req.weights, variant=ckpt.variant, patches=req.patches, task=req.task)
        weights = Weights(f"{ckpt.format}:{Path(req.weights).name}", False, ckpt.sha256, ckpt.format,
                          tuple(ckpt.class_names) if ckpt.class_names else None)
        return model.set_attention(req.attention).eval(), weights
    say("=" * 78)
    say(f"NO --weights GIVEN: exporting {what} with CALIBRATED SYNTHETIC WEIGHTS.")
    outputs = "masks" if req.segmentation else "predictions"
    say(f"The artifact is real and validated, but its {outputs} are meaningless.")
    say("Export a real checkpoint with WEIGHTS=path/to/checkpoint (make) or --weights (CLI).")
    say("=" * 78)
    if req.segmentation:  # BatchNorm statistics from 256x256 photos: 4x faster than at 512, and hardly different
        model = synthetic_segmentation_model(req.variant, patches=req.patches, size=DEFAULT_SIZE)
    else:
        model = synthetic_model(req.variant, patches=req.patches)
    return model.set_attention(req.attention).eval(), Weights(SYNTHETIC_ORIGIN, True)


def labels(model: MobileViT, weights: Weights) -> list[str]:
    from mobilevit.labels import class_names

    if weights.class_names is None and hasattr(model.cfg, "class_names"):  # segmentation: VOC's 21 names
        return list(model.cfg.class_names)
    return class_names(model.cfg.num_classes, weights.class_names)


def validation_photos(req: ExportRequest, cfg) -> dict[int, np.ndarray]:
    """Preprocessed real photos per validation size: the user's folder, or views of bundled photos."""
    from data.photos import photo_variants
    from mobilevit.preprocess import preprocess

    def batch(size: int, count: int, seed: int) -> np.ndarray:
        images = user_photos(req.images)[:count] if req.images else photo_variants(count, seed=seed)
        return preprocess(images, cfg, size).numpy()

    count = SEGMENTATION_VALIDATION_IMAGES if req.segmentation else VALIDATION_IMAGES
    val = {s: batch(s, count, VALIDATION_SEED) for s in req.sizes}
    if req.dynamic_hw:
        val.update({s: batch(s, 4, VALIDATION_SEED + 1) for s in DYNAMIC_HW_SIZES if s not in val})
    return val


def calibration(req: ExportRequest, cfg) -> np.ndarray:
    """Calibration photos that validation does not use: from a user folder, the images after the first
    ``VALIDATION_IMAGES`` (all of them, with a warning, if the folder holds no more)."""
    from mobilevit.preprocess import preprocess

    if not req.images:
        photos = calibration_photos(cfg, req.sizes[0], CALIBRATION_IMAGES)
        if req.int8_budget is None:
            return photos
        # the int8 search's held-out photos, last (a searching converter splits them off, export.int8search):
        # other views of the validation pool's photographs (the calibration pool's flatter the drift)
        from data.photos import photo_variants

        from .int8search import SEARCH_IMAGES

        held = preprocess(photo_variants(SEARCH_IMAGES, seed=SEARCH_SEED), cfg, req.sizes[0]).numpy()
        return np.concatenate([photos, held])

    images = user_photos(req.images)
    if len(images) > VALIDATION_IMAGES:
        images = images[VALIDATION_IMAGES:]
    else:
        say(f"{req.images} holds {len(images)} images: int8 is calibrated on the photos it is validated on; "
            f"give {VALIDATION_IMAGES + 1} or more to keep them apart")
    return preprocess(images, cfg, req.sizes[0]).numpy()


def search_photos(req: ExportRequest, cfg, class_names) -> tuple[np.ndarray, tuple[int, ...]] | None:
    """A top-1 budget's held-out photos and their labels (None for any other request): labelled files of the
    user's class folders (``data.folders.scan``) that validation and calibration do not read (those take the
    first files by path, ``user_photos``), balanced over the classes, at most ``TOP1_IMAGES``. The pipeline
    appends them to the calibration photos, where the search splits them off (``Int8Options.heldout_labels``)."""
    from data.folders import FolderError, decode, scan
    from data.photos import image_files
    from mobilevit.preprocess import preprocess

    from .int8search import SEARCH_IMAGES, TOP1_IMAGES, TOP1_NEEDS, parse_budget

    if req.int8_budget is None or parse_budget(req.int8_budget).metric != "top1":
        return None
    try:
        found = scan(req.images, cfg.num_classes, list(class_names) if class_names else None)
    except FolderError as e:
        raise ExportConfigError(f"--int8-budget {req.int8_budget}: {e}") from e
    read = set(image_files(req.images)[:USER_PHOTOS])
    rest = found.subset(np.array([i for i, f in enumerate(found.files) if f not in read], dtype=np.int64))
    if len(rest) < SEARCH_IMAGES:
        raise ExportConfigError(f"--int8-budget {req.int8_budget}: {req.images} holds {len(rest)} labelled images "
                                f"beyond the first {len(read)} (by path) that validation and calibration read; "
                                f"{TOP1_NEEDS}")
    rest = rest.balanced(TOP1_IMAGES, seed=SEARCH_SEED)
    photos = preprocess([decode(f) for f in rest.files], cfg, req.sizes[0]).numpy()
    return photos, tuple(int(k) for k in rest.labels)
