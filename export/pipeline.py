"""One export, end to end: model -> artifact(s) -> validation -> manifest -> atomic publish.

Each target module only converts (``export.coreml``, ``export.onnx``, ``export.tflite``); this
module owns what is common: loading weights, photos, validation, the manifest and publishing.
"""
from __future__ import annotations

import platform
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from mobilevit import InputSizeError, MobileViT, get_config
from mobilevit.model import ATTENTION_LAYOUTS
from mobilevit.patches import get_strategy

from . import publish
from .config import DEFAULT_ENUMERATED_SIZES, ExportConfigError, check_precision, target_config, tolerance
from .graph import inspect
from .validate import ValidationReport, drift, failures

# How many real photos each artifact is validated on, and how many calibrate int8.
VALIDATION_IMAGES = 16
CALIBRATION_IMAGES = 32


@dataclass(frozen=True)
class ExportRequest:
    """Everything the CLI can ask for; ``None`` means the target's default."""

    target: str
    variant: str | None = "small"  # None: the checkpoint's own variant (or small without --weights)
    weights: str | None = None
    precisions: tuple[str, ...] = ()
    patches: str | None = None
    attention: str | None = None  # batched | split
    sizes: tuple[int, ...] = (256,)
    out: Path = Path("artifacts")
    force: bool = False
    input_kind: str = "image"  # Core ML: image | tensor
    output_kind: str = "classifier"  # Core ML: classifier | logits
    dynamic_hw: bool = False  # ONNX: symbolic height/width
    images: str | None = None  # folder of the user's own photos for validation/calibration


@dataclass
class ExportResult:
    folder: Path
    artifact: Path
    manifest: dict = field(default_factory=dict)


def _say(msg: str) -> None:
    print(f"[export] {msg}", file=sys.stderr, flush=True)


def resolve(req: ExportRequest) -> ExportRequest:
    """Fill target defaults and refuse anything the exporter cannot honour, before any work."""
    cfg = target_config(req.target)
    if req.variant is None:
        from mobilevit.checkpoints import load_checkpoint

        req = replace(req, variant=load_checkpoint(req.weights).variant if req.weights else "small")
    req = replace(req, variant=get_config(req.variant).name)
    precisions = req.precisions or (cfg.default_precision,)
    for p in precisions:
        check_precision(req.target, p)
    patches = get_strategy(req.patches or cfg.default_patches).name
    attention = req.attention or cfg.default_attention
    if attention not in ATTENTION_LAYOUTS:
        raise ExportConfigError(
            f"unknown attention layout {attention!r}; choose one of: {', '.join(ATTENTION_LAYOUTS)}")
    sizes = tuple(req.sizes) or (256,)
    for s in sizes:
        if s % 32 or s < 64 or s > 1024:
            raise ExportConfigError(
                f"size {s} is not accepted: MobileViT takes multiples of 32 between 64 and 1024 "
                "(e.g. 160, 192, 224, 256, 288, 320)")
    if len(sizes) > 1:
        if req.target != "coreml":
            raise ExportConfigError(
                f"{req.target} exports one size (got {sizes}); use --dynamic-hw for ONNX, or export "
                "each size separately")
        odd = [s for s in sizes if s % 64]
        if odd:
            raise ExportConfigError(
                f"sizes {odd} give an odd patch grid at stride 32, which needs a resize that one "
                "multi-size Core ML model cannot switch on and off; use multiples of 64 "
                f"(e.g. {', '.join(str(s) for s in DEFAULT_ENUMERATED_SIZES if s % 64 == 0)}) or export "
                "those sizes as separate models")
    if req.dynamic_hw and req.target != "onnx":
        raise ExportConfigError("--dynamic-hw applies to ONNX only")
    if req.dynamic_hw and sizes[0] % 64:
        raise ExportConfigError("--dynamic-hw needs --size to be a multiple of 64 (e.g. 256)")
    if req.input_kind not in ("image", "tensor"):
        raise ExportConfigError(f"unknown input kind {req.input_kind!r}; choose image or tensor")
    if req.output_kind not in ("classifier", "logits"):
        raise ExportConfigError(f"unknown output kind {req.output_kind!r}; choose classifier or logits")
    return replace(req, precisions=tuple(precisions), patches=patches, attention=attention, sizes=sizes,
                   out=Path(req.out))


def destination(req: ExportRequest, precision: str) -> Path:
    extra = "" if req.sizes == (256,) else "_" + "-".join(str(s) for s in req.sizes)
    return req.out / f"mobilevit_{req.variant}_{req.target}_{precision}{extra}"


def load_model(req: ExportRequest) -> tuple[MobileViT, dict]:
    """The model to export and a description of its weights for the manifest."""
    from mobilevit.synthetic import SYNTHETIC_ORIGIN, synthetic_model

    if req.weights:
        from mobilevit.checkpoints import load_checkpoint
        from mobilevit.checkpoints import load_model as load_checkpoint_model

        ckpt = load_checkpoint(req.weights)
        if ckpt.variant != get_config(req.variant).name:
            from mobilevit.checkpoints import CheckpointError

            raise CheckpointError(
                f"{req.weights} holds MobileViT {ckpt.variant} weights ({ckpt.format} format) but "
                f"--variant is {req.variant}: pass --variant {ckpt.variant}")
        model = load_checkpoint_model(req.weights, variant=ckpt.variant, patches=req.patches)
        info = {"origin": f"{ckpt.format}:{Path(req.weights).name}", "synthetic": False,
                "sha256": ckpt.sha256, "format": ckpt.format,
                "class_names": list(ckpt.class_names) if ckpt.class_names else None}
        return model.set_attention(req.attention).eval(), info
    _say("=" * 78)
    _say(f"NO --weights GIVEN: exporting MobileViT {req.variant} with CALIBRATED SYNTHETIC WEIGHTS.")
    _say("The artifact is real and validated, but its predictions are meaningless.")
    _say("Export a real checkpoint with WEIGHTS=path/to/checkpoint (make) or --weights (CLI).")
    _say("=" * 78)
    model = synthetic_model(req.variant, patches=req.patches).set_attention(req.attention)
    return model, {"origin": SYNTHETIC_ORIGIN, "synthetic": True, "sha256": None, "format": None,
                   "class_names": None}


def photos(req: ExportRequest, cfg, size: int, count: int, seed: int) -> np.ndarray:
    """Preprocessed real photographs at ``size``: the user's folder, or photos from packages."""
    from mobilevit.images import load_folder, photo_variants
    from mobilevit.preprocess import preprocess

    images = load_folder(req.images) if req.images else photo_variants(count, seed=seed)
    return preprocess(images[:count], cfg, size).numpy()


def _labels(model: MobileViT, weights: dict) -> list[str]:
    if weights.get("class_names"):
        return list(weights["class_names"])
    if model.cfg.num_classes == 1000:
        from mobilevit.labels import imagenet_labels

        return imagenet_labels()
    return [f"class_{i}" for i in range(model.cfg.num_classes)]


def validate_artifact(path: Path, target: str, precision: str, reference: Callable[[np.ndarray], np.ndarray],
                      batches: dict[int, np.ndarray]) -> ValidationReport:
    """Run ``path`` in its runtime on each size's photos and compare with ``reference``."""
    from .runners import RunnerUnavailable, make_runner

    report = ValidationReport(tolerance(target, precision))
    try:
        runner = make_runner(path)
    except RunnerUnavailable as e:
        report.skipped.append(f"skipped: {e}")
        return report
    report.runtime = f"{runner.runtime} {runner.version}"
    for size, x in batches.items():
        try:
            out = runner(x)
        except Exception as e:  # a runtime that cannot run the artifact is a validation failure
            report.problems.append(f"{size}x{size}: {runner.runtime} could not run it: {type(e).__name__}: {e}")
            continue
        d = drift(reference(x), out)
        report.by_size[size] = d
        report.problems += failures(d, report.tolerance, f"{size}x{size}")
    return report


def _torch_reference(model: MobileViT, softmax: bool) -> Callable[[np.ndarray], np.ndarray]:
    def run(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            y = model(torch.from_numpy(x))
            return (y.softmax(-1) if softmax else y).numpy()
    return run


def _manifest(req: ExportRequest, precision: str, model: MobileViT, weights: dict, artifact: Path,
              input_spec: dict, output_spec: dict, report: ValidationReport, seconds: float) -> dict:
    return {
        "artifact": artifact.name,
        "artifact_sha256": publish.sha256_path(artifact),
        "target": req.target,
        "precision": precision,
        "variant": model.cfg.name,
        "num_classes": model.cfg.num_classes,
        "weights": {k: v for k, v in weights.items() if k != "class_names"},
        "patch_strategy": req.patches,
        "attention_layout": req.attention,
        "input": input_spec,
        "output": output_spec,
        "graph": inspect(artifact).to_dict(),
        "validation": report.to_dict(),
        "tool_versions": publish.tool_versions(),
        "machine": {"system": platform.system(), "machine": platform.machine(),
                    "python": platform.python_version()},
        "export_seconds": round(seconds, 2),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def _input_spec(req: ExportRequest, layout: str, name: str, dtype: str = "float32") -> dict:
    return {"name": name, "sizes": list(req.sizes), "layout": layout, "dtype": dtype,
            "channel_order": "BGR", "scale": "pixel / 255", "batch": "dynamic" if layout == "NCHW*" else 1}


def run_export(req: ExportRequest) -> list[ExportResult]:
    """Export, validate and publish every precision of ``req``; returns what was published."""
    req = resolve(req)
    dests = {p: destination(req, p) for p in req.precisions}
    for dest in dests.values():
        publish.check_destination(dest, req.force)
    model, weights = load_model(req)
    labels = _labels(model, weights)
    cfg = model.cfg
    val = {s: photos(req, cfg, s, VALIDATION_IMAGES, seed=1) for s in req.sizes}
    if req.dynamic_hw:
        val.update({s: photos(req, cfg, s, 4, seed=2) for s in (128, 192, 320, 384) if s not in val})
    calib = photos(req, cfg, req.sizes[0], CALIBRATION_IMAGES, seed=7)
    from . import targets

    build = targets.BUILDERS[req.target]
    return build(req, model, weights, labels, val, calib, dests)


def publish_artifact(req: ExportRequest, precision: str, dest: Path, make: Callable[[Path], Path],
                     model: MobileViT, weights: dict, labels: list[str], val: dict[int, np.ndarray],
                     input_spec: dict, output_spec: dict, softmax: bool = False) -> ExportResult:
    """Build with ``make(staging_folder) -> artifact``, validate, write the manifest, publish."""
    start = time.time()
    with publish.staging(dest, req.force) as tmp:
        _say(f"{req.target} {precision}: converting MobileViT {model.cfg.name} "
             f"(patches={req.patches}, attention={req.attention}, sizes={list(req.sizes)}) ...")
        artifact = make(tmp)
        _say(f"{req.target} {precision}: validating on {len(next(iter(val.values())))} real photos "
             f"at {', '.join(f'{s}x{s}' for s in val)} ...")
        report = validate_artifact(artifact, req.target, precision, _torch_reference(model, softmax), val)
        for line in report.skipped:
            _say(f"{req.target} {precision}: {line}")
        report.raise_if_failed(f"{req.target} {precision} artifact")
        (tmp / "labels.txt").write_text("\n".join(labels) + "\n")
        manifest = _manifest(req, precision, model, weights, artifact, input_spec, output_spec, report,
                             time.time() - start)
        publish.write_json(tmp / "manifest.json", manifest)
        for size, d in report.by_size.items():
            _say(f"{req.target} {precision} {size}x{size}: max abs {d.max_abs:.3g} "
                 f"(rel {d.max_abs_rel:.2g}), cosine {d.cosine_min:.6f}, top-1 agreement "
                 f"{d.top1_agreement:.0%} [{report.runtime}]")
    final = dest / artifact.name
    _say(f"{req.target} {precision}: wrote {final}")
    return ExportResult(dest, final, manifest)


__all__ = ["ExportRequest", "ExportResult", "run_export", "resolve", "ExportConfigError", "InputSizeError"]
