"""One export, end to end: request -> convert -> validate -> publish, for every precision asked.

Each stage lives in its own module (``request``, ``convert``, ``validate``, ``publish``); this
module only runs them in order. Each precision is validated and published on its own: a
precision that fails validation is not published, the others are, and the error raised at the
end names both.
"""
from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import publish
from .config import hook, target_config
from .convert import convert_all, target_options
from .errors import ValidationError, writing_to
from .graph import inspect
from .quiet import silenced, ticking
from .request import (
    ExportRequest,
    artifact_stem,
    calibration,
    destination,
    labels,
    load_model,
    resolve,
    say,
    search_photos,
    validation_photos,
)
from .tasks import segmentation_output
from .validate import int8_blame, torch_reference, validate_artifact

__all__ = ["ExportRequest", "ExportResult", "run_export", "resolve"]


@dataclass
class ExportResult:
    folder: Path
    artifact: Path
    manifest: dict = field(default_factory=dict)


def run_export(req: ExportRequest) -> list[ExportResult]:
    """Export, validate and publish every precision of ``req``; returns what was published.

    Raises :class:`ValidationError` (with ``published``) if any precision failed validation.
    """
    req = resolve(req)
    cfg = target_config(req.target)
    dests = {p: destination(req, p) for p in req.precisions}
    for dest in dests.values():
        publish.check_destination(dest, req.force)
    model, weights = load_model(req)
    names = labels(model, weights)
    val = validation_photos(req, model.cfg)
    calib = calibration(req, model.cfg)
    options = req.target_options()
    held = search_photos(req, model.cfg, weights.class_names)
    if held is not None:  # a top-1 budget's labelled photos, last (the search splits them off)
        calib = np.concatenate([calib, held[0]])
        options["heldout_labels"] = held[1]
    # a softmax classifier (probabilities, not logits) is compared with PyTorch's softmax
    classifier = getattr(target_options(req.target, options), "outputs_probabilities", False)
    preprocessing = model.cfg.preprocessing.describe()
    card = {"task": req.task, "variant": model.cfg.name, "weights_origin": weights.origin,
            "synthetic": str(weights.synthetic).lower(),
            "patch_strategy": req.patches, "attention_layout": req.attention, "sizes": ",".join(map(str, req.sizes)),
            "preprocessing": preprocessing["resize"]}
    provenance = {**card, "weights_sha256": weights.sha256 or "", "num_classes": str(model.cfg.num_classes)}
    if req.segmentation:
        provenance["output"] = req.output_kind
    metadata = hook(cfg, "metadata_options")  # labels and metadata, as the target's ecosystem reads them
    if metadata is not None:
        options.update(metadata(task=req.task, output_kind=req.output_kind, names=names, card=card,
                                provenance=provenance, preprocessing=preprocessing))
    # what is converted: the model, or (segmentation --output classmap) the model with its argmax at input size
    converted = segmentation_output(model, req.output_kind) if req.segmentation else model
    published: list[ExportResult] = []
    failed: list[ValidationError] = []
    # a full or read-only output disk is the output's error (exit 2), raised once the work folder is gone
    with writing_to(req.out), tempfile.TemporaryDirectory(prefix=".build-", dir=req.out) as work:
        start = time.time()
        what = f"{'DeepLabV3-' if req.segmentation else ''}MobileViT {model.cfg.name}"
        say(f"{req.target} {', '.join(req.precisions)}: converting {what} "
            f"(patches={req.patches}, attention={req.attention}, sizes={list(req.sizes)}) ...")
        # the converters' own logs and bars (C++ included) are silenced; --verbose shows them
        with ticking(f"{req.target} {', '.join(req.precisions)}: converting"), silenced():
            made = convert_all(converted, req.target, req.precisions, work, size=req.sizes, calibration=calib,
                               **options)
        seconds = (time.time() - start) / len(made)
        reference = torch_reference(converted, classifier)  # PyTorch runs once on the photos, for every precision
        for precision, artifact in made.items():
            searched = publish.read_int8_search(artifact)
            artifact = artifact.rename(artifact.with_name(f"{artifact_stem(req)}_{precision}{artifact.suffix}"))
            say(f"{req.target} {precision}: validating on {len(next(iter(val.values())))} real photos "
                f"at {', '.join(f'{s}x{s}' for s in val)} ...")
            with silenced():
                report = validate_artifact(artifact, req.target, precision, reference, val, task=req.task,
                                           probabilities=classifier)
            for line in report.skipped:
                say(f"{req.target} {precision}: {line}")
            if report.problems and searched is None:  # the recipe's blame; a searched set has its own record
                hint = int8_blame(req.target, precision, req.float_kinds)
                report.problems += [hint] if hint else []
            try:
                report.raise_if_failed(f"{req.target} {precision} artifact")
            except ValidationError as err:
                say(str(err))
                failed.append(err)
                continue
            for size, d in report.by_size.items():
                say(f"{req.target} {precision} {size}x{size}: {_figures(d)} [{report.runtime}]")
            declared = hook(cfg, "artifact_preprocessing")  # e.g. an input channel order of its own
            preprocessing = {**model.cfg.preprocessing.describe(), **(declared(artifact) if declared else {})}
            manifest = publish.manifest(
                artifact, target=req.target, precision=precision, model=model, weights=weights.to_dict(),
                options={k: v for k, v in options.items() if k not in ("labels", "metadata")}, task=req.task,
                output=req.output_kind,
                preprocessing=preprocessing, sizes=req.sizes,
                graph=inspect(artifact).to_dict(), validation=report.to_dict(), seconds=seconds,
                int8_search=searched)
            final = publish.publish(artifact, dests[precision], manifest, names, req.force)
            say(f"{req.target} {precision}: wrote {final}")
            published.append(ExportResult(dests[precision], final, manifest))
    if failed:
        raise ValidationError(", ".join(e.artifact for e in failed),
                              [f"{e.artifact}: {p}" for e in failed for p in e.problems],
                              published=tuple(str(r.artifact) for r in published))
    return published


def _figures(d) -> str:
    """One size's validation figures, as the export log shows them."""
    if hasattr(d, "miou"):  # segmentation
        logits = (f"max abs {d.max_abs:.3g} (rel {d.max_abs_rel:.2g}), cosine {d.cosine_min:.6f}, "
                  if d.max_abs is not None else "")
        return (f"{logits}pixels agreeing {d.pixel_agreement:.2%} (worst photo {d.pixel_agreement_min:.2%}), "
                f"mIoU {d.miou:.4f}")
    return (f"max abs {d.max_abs:.3g} (rel {d.max_abs_rel:.2g}), cosine {d.cosine_min:.6f}, "
            f"top-1 agreement {d.top1_agreement:.0%}")
