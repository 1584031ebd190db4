"""Per-target build steps used by :func:`export.pipeline.run_export`."""
from __future__ import annotations

import tempfile
from pathlib import Path

from .pipeline import ExportRequest, ExportResult, _input_spec, _say, publish_artifact
from .validate import ValidationError


class _Collector:
    """Publish each precision on its own; remember failures and raise them together at the end."""

    def __init__(self):
        self.results: list[ExportResult] = []
        self.failed: list[ValidationError] = []

    def add(self, fn, *args, **kwargs) -> None:
        try:
            self.results.append(fn(*args, **kwargs))
        except ValidationError as e:
            _say(str(e))
            self.failed.append(e)

    def finish(self) -> list[ExportResult]:
        if self.failed:
            done = [str(r.artifact) for r in self.results]
            problems = [f"{e.artifact}: {p}" for e in self.failed for p in e.problems]
            if done:
                problems.append("published anyway (they passed): " + ", ".join(done))
            raise ValidationError(", ".join(e.artifact for e in self.failed), problems)
        return self.results


def build_coreml(req: ExportRequest, model, weights, labels, val, calib, dests) -> list[ExportResult]:
    from .coreml import (
        IMAGE_INPUT,
        LABEL_OUTPUT,
        LOGITS_OUTPUT,
        PROBS_OUTPUT,
        TENSOR_INPUT,
        CoreMLOptions,
        convert_coreml,
    )

    results = _Collector()
    classifier = req.output_kind == "classifier"
    for precision, dest in dests.items():
        meta = {"variant": model.cfg.name, "weights_origin": weights["origin"],
                "synthetic": str(weights["synthetic"]).lower(), "patch_strategy": req.patches,
                "attention_layout": req.attention,
                "precision": precision, "sizes": ",".join(map(str, req.sizes)),
                "preprocessing": "resize short side to 288/256 of the input, center crop; BGR; x/255"}
        opts = CoreMLOptions(precision=precision, input_kind=req.input_kind, output_kind=req.output_kind,
                             sizes=req.sizes, labels=tuple(labels) if classifier else None, metadata=meta)

        def make(tmp: Path, opts=opts) -> Path:
            path = tmp / f"MobileViT_{model.cfg.name}.mlpackage"
            convert_coreml(model, opts).save(str(path))
            return path

        name = IMAGE_INPUT if req.input_kind == "image" else TENSOR_INPUT
        in_spec = _input_spec(req, "image" if req.input_kind == "image" else "NCHW", name)
        out_spec = ({"probabilities": PROBS_OUTPUT, "label": LABEL_OUTPUT, "classes": len(labels)}
                    if classifier else {"name": LOGITS_OUTPUT, "shape": [1, model.cfg.num_classes]})
        results.add(publish_artifact, req, precision, dest, make, model, weights, labels, val, in_spec,
                    out_spec, softmax=classifier)
    return results.finish()


def build_onnx(req: ExportRequest, model, weights, labels, val, calib, dests) -> list[ExportResult]:
    from .onnx import INPUT_NAME, OUTPUT_NAME, convert_onnx_precision, export_onnx

    results = _Collector()
    for precision, dest in dests.items():
        def make(tmp: Path, precision=precision) -> Path:
            path = tmp / f"mobilevit_{model.cfg.name}.onnx"
            with tempfile.TemporaryDirectory(dir=tmp) as scratch:
                fp32 = export_onnx(model, Path(scratch) / "fp32.onnx", size=req.sizes[0],
                                   dynamic_batch=True, dynamic_hw=req.dynamic_hw)
                convert_onnx_precision(fp32, path, precision, calibration=calib)
            return path

        in_spec = _input_spec(req, "NCHW", INPUT_NAME)
        in_spec["batch"] = "dynamic"
        in_spec["height_width"] = "dynamic (multiples of 64)" if req.dynamic_hw else "static"
        out_spec = {"name": OUTPUT_NAME, "shape": ["batch", model.cfg.num_classes]}
        results.add(publish_artifact, req, precision, dest, make, model, weights, labels, val, in_spec, out_spec)
    return results.finish()


def build_tflite(req: ExportRequest, model, weights, labels, val, calib, dests) -> list[ExportResult]:
    """One onnx2tf run makes every requested precision; each is validated and published alone."""
    from .tflite import export_tflite

    results = _Collector()
    root = Path(req.out)
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".tflite-build-", dir=root) as build:
        _say(f"tflite: onnx2tf conversion of {', '.join(dests)} (about a minute per variant) ...")
        made = export_tflite(model, build, size=req.sizes[0], precisions=tuple(dests), calibration=calib)
        for precision, dest in dests.items():
            def make(tmp: Path, precision=precision) -> Path:
                path = tmp / f"mobilevit_{model.cfg.name}_{precision}.tflite"
                made[precision].rename(path)
                return path

            in_spec = _input_spec(req, "NHWC", "input")
            in_spec["dtype"] = "float32"
            out_spec = {"name": "logits", "shape": [1, model.cfg.num_classes]}
            results.add(publish_artifact, req, precision, dest, make, model, weights, labels, val, in_spec,
                        out_spec)
    return results.finish()


BUILDERS = {"coreml": build_coreml, "onnx": build_onnx, "tflite": build_tflite}
