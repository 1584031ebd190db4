"""Core ML export: an ``.mlpackage`` ML program a user can drop into Xcode.

Defaults: FLOAT16 compute precision, image input (channel order and scale from
``mobilevit.config.Preprocessing``: what the public weights expect), classifier output with the
class names (softmax probabilities + top label). Options:
FLOAT32, a tensor input, raw logits, several input sizes in one model (``EnumeratedShapes``),
and weight compression through ``coremltools.optimize`` (8-bit linear, 8-bit palettization).
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from mobilevit.config import Preprocessing

from .errors import ExportConfigError

IMAGE_INPUT = "image"
TENSOR_INPUT = "input"
LOGITS_OUTPUT = "logits"
PROBS_OUTPUT = "classLabel_probs"
LABEL_OUTPUT = "classLabel"


INPUT_KINDS = ("image", "tensor")
OUTPUT_KINDS = ("classifier", "logits")


@dataclass(frozen=True)
class CoreMLOptions:
    """Core ML-only choices (keyword arguments of ``export.convert(model, "coreml", ...)``)."""

    input_kind: str = "image"  # image (what an app passes) | tensor
    output_kind: str = "classifier"  # classifier (softmax + class names) | logits
    labels: tuple[str, ...] | None = None  # classifier names; default: the model's (ImageNet for 1000 classes)
    metadata: dict[str, str] = field(default_factory=dict)  # user-defined metadata fields
    preprocessing: Preprocessing = Preprocessing()  # channel order and scale of the image input

    def __post_init__(self):
        if self.input_kind not in INPUT_KINDS:
            raise ExportConfigError(f"unknown input kind {self.input_kind!r}; choose one of: {', '.join(INPUT_KINDS)}")
        if self.output_kind not in OUTPUT_KINDS:
            raise ExportConfigError(
                f"unknown output kind {self.output_kind!r}; choose one of: {', '.join(OUTPUT_KINDS)}")


def convert(model: torch.nn.Module, precisions: tuple[str, ...], workdir: Path, *, sizes: tuple[int, ...],
            calibration: np.ndarray | None, options: CoreMLOptions) -> dict[str, Path]:
    """One ``.mlpackage`` per precision: ``{precision: path}`` (calibration is not used: weights only)."""
    if options.output_kind == "classifier" and not options.labels:
        from mobilevit.labels import class_names

        cfg = getattr(model, "cfg", None)
        if cfg is None:
            raise ExportConfigError("a classifier output needs class labels: pass labels=... or output_kind='logits'")
        from dataclasses import replace

        options = replace(options, labels=tuple(class_names(cfg.num_classes)))
    out = {}
    for precision in precisions:
        path = Path(workdir) / f"model_{precision}.mlpackage"
        convert_coreml(model, precision, sizes, options).save(str(path))
        out[precision] = path
    return out


class _Probabilities(torch.nn.Module):
    """Classifier head for Core ML: ``classify`` expects probabilities, so add the softmax."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(x).softmax(dim=-1)


def _input_shape(sizes: tuple[int, ...]):
    import coremltools as ct

    if len(sizes) == 1:
        return (1, 3, sizes[0], sizes[0])
    shapes = [(1, 3, s, s) for s in sizes]
    return ct.EnumeratedShapes(shapes=shapes, default=shapes[0])


def convert_coreml(model: torch.nn.Module, precision: str, sizes: tuple[int, ...], opts: CoreMLOptions):
    """Trace ``model`` and convert it to an ML program; returns an unsaved ``ct.models.MLModel``.

    ``precision``: fp16 | fp32 | int8 | palettize8 (weight compression on fp16 compute); several
    ``sizes`` become ``EnumeratedShapes`` with the first as the default.
    """
    import coremltools as ct

    size = sizes[0]
    classifier = opts.output_kind == "classifier"
    module = (_Probabilities(model) if classifier else model).eval()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(module, torch.zeros(1, 3, size, size))
    shape = _input_shape(sizes)
    pre = opts.preprocessing
    if opts.input_kind == "image":
        inputs = [ct.ImageType(name=IMAGE_INPUT, shape=shape, scale=pre.pixel_scale,
                               color_layout=getattr(ct.colorlayout, pre.channel_order))]
    else:
        inputs = [ct.TensorType(name=TENSOR_INPUT, shape=shape)]
    kwargs = {}
    if classifier:
        if not opts.labels:
            raise ValueError("a classifier output needs class labels")
        kwargs["classifier_config"] = ct.ClassifierConfig(list(opts.labels), predicted_feature_name=LABEL_OUTPUT)
    else:
        kwargs["outputs"] = [ct.TensorType(name=LOGITS_OUTPUT)]
    compute = ct.precision.FLOAT32 if precision == "fp32" else ct.precision.FLOAT16
    mlmodel = ct.convert(traced, convert_to="mlprogram", inputs=inputs, compute_precision=compute,
                         minimum_deployment_target=ct.target.iOS16, skip_model_load=True, **kwargs)
    if precision in ("int8", "palettize8"):
        mlmodel = compress_weights(mlmodel, precision)
    _describe(mlmodel, opts, sizes, classifier)
    return mlmodel


def compress_weights(mlmodel, scheme: str):
    """8-bit symmetric linear quantization (``int8``) or 8-bit k-means palettization of weights."""
    import coremltools.optimize.coreml as cto

    if scheme == "int8":
        config = cto.OptimizationConfig(
            global_config=cto.OpLinearQuantizerConfig(mode="linear_symmetric", dtype="int8"))
        return cto.linear_quantize_weights(mlmodel, config)
    if scheme == "palettize8":
        config = cto.OptimizationConfig(global_config=cto.OpPalettizerConfig(mode="kmeans", nbits=8))
        return cto.palettize_weights(mlmodel, config)
    raise ValueError(f"unknown Core ML weight compression {scheme!r}")


def _describe(mlmodel, opts: CoreMLOptions, sizes: tuple[int, ...], classifier: bool) -> None:
    """Model card fields Xcode shows: description, author, license, version, I/O descriptions."""
    md = dict(opts.metadata)
    variant = md.get("variant", "?")
    synthetic = md.get("synthetic") == "true"
    mlmodel.short_description = (
        f"MobileViT v1 {variant} image classifier (Mehta & Rastegari, ICLR 2022). "
        + ("WARNING: calibrated SYNTHETIC weights, predictions are meaningless; export a real "
           "checkpoint with --weights." if synthetic else f"Weights: {md.get('weights_origin', '?')}."))
    mlmodel.author = md.pop("author", "mobilevit-export toolkit")
    mlmodel.license = md.pop("license", "Model code MIT; weights under their publisher's license")
    mlmodel.version = md.pop("version", "1.0")
    for key, value in md.items():
        mlmodel.user_defined_metadata[key] = str(value)
    listed = ", ".join(f"{s}x{s}" for s in sizes)
    name = IMAGE_INPUT if opts.input_kind == "image" else TENSOR_INPUT
    pre = opts.preprocessing.describe()
    mlmodel.input_description[name] = (
        f"Colour image, {listed} ({pre['resize']}); Core ML feeds it in {pre['channel_order']} order, "
        f"{pre['scale']}." if opts.input_kind == "image" else
        f"Float tensor [1, 3, H, W] for H = W in ({listed}): {pre['channel_order']} channels, {pre['scale']}.")
    if classifier:
        mlmodel.output_description[PROBS_OUTPUT] = "Probability of each class (softmax of the logits)"
        mlmodel.output_description[LABEL_OUTPUT] = "Most likely class"
    else:
        mlmodel.output_description[LOGITS_OUTPUT] = "Class logits [1, num_classes] (before softmax)"
