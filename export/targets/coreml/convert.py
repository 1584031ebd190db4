"""Core ML export: an ``.mlpackage`` ML program a user can drop into Xcode.

Defaults: FLOAT16 compute precision, image input (channel order and scale from
``mobilevit.config.Preprocessing``: what the public weights expect), classifier output with the
class names (softmax probabilities + top label). Options:
FLOAT32, a tensor input, raw logits, several input sizes in one model (``EnumeratedShapes``),
and weight compression through ``coremltools.optimize`` (8-bit linear, 8-bit palettization), and
``w8a8``: int8 activations and int8 weights (coremltools' activation quantization, calibrated on real
photos run through the reference executor, then linear weight quantization; iOS 17).

The program itself (options, float program, layer matching, int8) is ``program.py``; the layer search for
``--int8-budget`` is ``search.py``.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ...errors import ExportConfigError
from .program import (
    CLASSMAP_OUTPUT,
    CONVERSION_DATE,
    IMAGE_INPUT,
    LABEL_OUTPUT,
    LOGITS_OUTPUT,
    PREVIEW_PARAMS,
    PREVIEW_TYPE,
    PROBS_OUTPUT,
    TENSOR_INPUT,
    CoreMLOptions,
    _calibration_feeds,
    compress_weights,
    float_program,
    kind_ops,
    layer_ops,
    quantize_w8a8,
    w8a8_configs,
)

__all__ = ["CoreMLOptions", "convert", "convert_coreml", "metadata_options", "normalise_package"]


def metadata_options(*, task: str, output_kind: str, names: list[str], card: dict, provenance: dict,
                     preprocessing: dict) -> dict:
    """Class labels (a classifier's ``classify`` op, a class map's preview) and the model card, for Xcode."""
    if task == "segmentation":
        return {"labels": tuple(names), "metadata": {**card, "output": output_kind}}
    if output_kind == "classifier":
        return {"labels": tuple(names), "metadata": card}
    return {}


def convert(model: torch.nn.Module, precisions: tuple[str, ...], workdir: Path, *, sizes: tuple[int, ...],
            calibration: np.ndarray | None, options: CoreMLOptions) -> dict[str, Path]:
    """One ``.mlpackage`` per precision: ``{precision: path}``; ``calibration`` (float ``[N, 3, H, W]``,
    model channel order, pixels / 255) calibrates ``w8a8``'s activation ranges."""
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
        if precision == "w8a8" and options.int8_budget is not None:
            import tempfile

            from ...publish import write_int8_search
            from .search import search_int8

            with tempfile.TemporaryDirectory(prefix="coreml-search-", dir=workdir) as scratch:
                int8, calib, searched = search_int8(model, calibration, options.int8_budget, Path(scratch),
                                                    sizes[0], labels=options.heldout_labels,
                                                    objective=options.int8_objective)
            convert_coreml(model, precision, sizes, options, calibration=calib, int8_layers=int8).save(str(path))
            write_int8_search(path, searched)  # the pipeline puts it in the manifest
        else:
            convert_coreml(model, precision, sizes, options, calibration=calibration).save(str(path))
        out[precision] = normalise_package(path)
    return out


def normalise_package(path: Path) -> Path:
    """Give the ``.mlpackage``'s ``Manifest.json`` entries identifiers derived from their paths.

    coremltools draws a random UUID for each item (weights, model spec) on every save, so two identical
    exports differed in this one file. A name-based UUID (uuid5 of the item's path) is just as unique
    inside the package and makes the artifact byte-identical from one run to the next.
    """
    import json
    import uuid

    manifest = path / "Manifest.json"
    data = json.loads(manifest.read_text())
    renamed = {old: str(uuid.uuid5(uuid.NAMESPACE_URL, f"mobilevit-export:{entry['path']}"))
               for old, entry in data["itemInfoEntries"].items()}
    data["itemInfoEntries"] = {renamed[old]: entry for old, entry in sorted(data["itemInfoEntries"].items(),
                                                                            key=lambda kv: kv[1]["path"])}
    data["rootModelIdentifier"] = renamed[data["rootModelIdentifier"]]
    manifest.write_text(json.dumps(data, indent=4) + "\n")
    return path


def convert_coreml(model: torch.nn.Module, precision: str, sizes: tuple[int, ...], opts: CoreMLOptions,
                   calibration: np.ndarray | None = None, int8_layers: Sequence[str] | None = None):
    """Trace ``model`` and convert it to an ML program; returns an unsaved ``ct.models.MLModel``.

    ``precision``: fp16 | fp32 | int8 | palettize8 (weight compression on fp16 compute) | w8a8 (int8
    activations and weights on fp16 compute, needs ``calibration``); several ``sizes`` become
    ``EnumeratedShapes`` with the first as the default. ``int8_layers``: w8a8 with exactly these layers of
    ``model`` int8 (a searched set, ``search.search_int8``) instead of the recipe's kinds.
    """
    from ...config import int8_recipe
    from ...int8 import float_kinds as kept_float

    opts.check_precisions((precision,))
    float_kinds = kept_float("coreml", precision, opts.float_kinds)
    recipe = int8_recipe("coreml", "w8a8")
    if precision == "w8a8" and calibration is None:
        raise ExportConfigError("w8a8 needs calibration photos (export.convert fills them in)")
    classifier = opts.output_kind == "classifier"
    mlmodel = float_program(model, precision, sizes, opts)
    if precision == "w8a8":
        samples = _calibration_feeds(calibration, opts.input_kind, opts.preprocessing)
        if int8_layers is None:
            configs = w8a8_configs(kind_ops(mlmodel.get_spec(), model), float_kinds,
                                   float_adds="add" in recipe.float_ops)
        else:
            configs = w8a8_configs({}, only_ops=layer_ops(mlmodel.get_spec(), model, int8_layers))
        mlmodel = quantize_w8a8(mlmodel, samples, *configs)
    elif precision == "int8" and float_kinds:
        mlmodel = compress_weights(mlmodel, precision, kind_ops(mlmodel.get_spec(), model), float_kinds)
    elif precision in ("int8", "palettize8"):
        mlmodel = compress_weights(mlmodel, precision)
    _describe(mlmodel, opts, sizes, classifier)
    return mlmodel


def _describe(mlmodel, opts: CoreMLOptions, sizes: tuple[int, ...], classifier: bool) -> None:
    """Model card fields Xcode shows: description, author, license, version, I/O descriptions."""
    md = dict(opts.metadata)
    variant = md.get("variant", "?")
    synthetic = md.get("synthetic") == "true"
    segmentation = md.get("task") == "segmentation"
    what = (f"DeepLabV3-MobileViT {variant} semantic segmentation ({len(opts.labels or ())} classes)" if segmentation
            else f"MobileViT v1 {variant} image classifier")
    mlmodel.short_description = (
        f"{what} (Mehta & Rastegari, ICLR 2022). "
        + ("WARNING: calibrated SYNTHETIC weights, predictions are meaningless; export a real "
           "checkpoint with --weights." if synthetic else f"Weights: {md.get('weights_origin', '?')}."))
    mlmodel.author = md.pop("author", "mobilevit-export toolkit")
    mlmodel.license = md.pop("license", "Model code MIT; weights under their publisher's license")
    mlmodel.version = md.pop("version", "1.0")
    for key, value in md.items():
        mlmodel.user_defined_metadata[key] = str(value)
    # coremltools stamps the day of conversion; two exports on either side of midnight then differ. The
    # manifest published beside the package records when it was made.
    mlmodel.user_defined_metadata.pop(CONVERSION_DATE, None)
    listed = ", ".join(f"{s}x{s}" for s in sizes)
    name = IMAGE_INPUT if opts.input_kind == "image" else TENSOR_INPUT
    pre = opts.preprocessing.describe()
    mlmodel.input_description[name] = (
        f"Colour image, {listed} ({pre['resize']}); Core ML feeds it in {pre['channel_order']} order, "
        f"{pre['scale']}." if opts.input_kind == "image" else
        f"Float tensor [1, 3, H, W] for H = W in ({listed}): {pre['channel_order']} channels, {pre['scale']}.")
    if classifier and opts.input_kind == "image":  # Xcode's Preview tab: drop a photo, see the classes
        mlmodel.user_defined_metadata[PREVIEW_TYPE] = "imageClassifier"
    if opts.output_kind == "classmap" and opts.input_kind == "image":  # ... or see the mask, with class names
        mlmodel.user_defined_metadata[PREVIEW_TYPE] = "imageSegmenter"
        mlmodel.user_defined_metadata[PREVIEW_PARAMS] = json.dumps({"labels": list(opts.labels or ())})
    if opts.labels and segmentation:
        mlmodel.user_defined_metadata["labels"] = json.dumps(list(opts.labels))  # index = class id
    if classifier:
        mlmodel.output_description[PROBS_OUTPUT] = "Probability of each class (softmax of the logits)"
        mlmodel.output_description[LABEL_OUTPUT] = "Most likely class"
    elif opts.output_kind == "classmap":
        mlmodel.output_description[CLASSMAP_OUTPUT] = (
            "Class index of every input pixel [1, H, W] (int32; the names are in the labels metadata, index = id)")
    elif segmentation:
        mlmodel.output_description[LOGITS_OUTPUT] = "Class logits [1, num_classes, H/16, W/16] (before softmax)"
    else:
        mlmodel.output_description[LOGITS_OUTPUT] = "Class logits [1, num_classes] (before softmax)"
