"""TFLite export through onnx2tf: fp32, fp16, dynamic-range int8 and full int8, NHWC RGB input.

Every ``.tflite`` takes an NHWC image in RGB order by default (the stem's input channels are reversed,
``mobilevit.rewrites.reverse_input_channels``), as Android bitmaps and MediaPipe deliver it, and carries
metadata (``export.targets.tflite.metadata``): our JSON entry (channel order, preprocessing, provenance) and, given
labels, MediaPipe's image-classifier metadata with ``labels.txt``, so MediaPipe Tasks can load it.

onnx2tf has traps (see ../shared/NOTES.md) that this module handles in one place:

* it downloads a calibration file unless ``calibration_image_sample_data_20x128x128x3_float32.npy``
  is in its working directory: we run it in a scratch folder holding one made from real photos;
* it runs ``onnxsim`` by name: the environment's ``bin`` goes first on ``PATH``;
* it rewrites its input ``.onnx`` in place: it gets a copy;
* it can be silently wrong: every output is validated by the caller (``export.validate``).
"""
from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from ...errors import ConversionError, ExportConfigError
from ...int8 import Int8Options
from .quantize import _nhwc, full_int8, search_int8

FLOAT_PRECISIONS = ("fp32", "fp16", "int8_dynamic")  # what onnx2tf's Keras model converts to (onnx2tf_driver)
CALIBRATION_FILE = "calibration_image_sample_data_20x128x128x3_float32.npy"
CHANNEL_ORDERS = ("RGB", "model")


class TFLiteConversionError(ConversionError):
    """onnx2tf failed; the message carries the tail of its log."""


@dataclass(frozen=True)
class TFLiteOptions(Int8Options):
    """TFLite-only choices (keyword arguments of ``export.convert(model, "tflite", ...)``); ``float_kinds``: see
    ``export.int8.Int8Options``."""

    target = "tflite"
    exporter: str = "ours"  # the ONNX step: ours (torch.export, opset 18, onnxsim) | as-is (see export.targets.onnx)
    # RGB: the artifact takes RGB (the stem's input channels reversed), what apps hold and MediaPipe's metadata
    # can say | model: the checkpoint's own order (BGR for the public weights). The as-is exporter keeps the model's.
    channel_order: str = "RGB"
    labels: tuple[str, ...] | None = None  # class names: MediaPipe image-classifier metadata with labels.txt
    metadata: dict[str, str] = field(default_factory=dict)  # more fields of our JSON entry (provenance)

    def __post_init__(self):
        from ..onnx.convert import check_exporter

        super().__post_init__()
        check_exporter(self.exporter)
        if self.channel_order not in CHANNEL_ORDERS:
            raise ExportConfigError(f"unknown TFLite channel_order {self.channel_order!r}; "
                                    f"choose one of: {', '.join(CHANNEL_ORDERS)}")


def convert(model, precisions: tuple[str, ...], workdir: Path, *, sizes: tuple[int, ...],
            calibration: np.ndarray | None, options: TFLiteOptions) -> dict[str, Path]:
    """PyTorch -> ONNX (static batch 1) -> one onnx2tf run -> ``{precision: .tflite}``.

    ``int8`` is :func:`full_int8` on the SavedModel of that same onnx2tf run, with the recipe's float kinds
    and op types (``export.config.INT8_RECIPES``) or ``options.float_kinds``; with ``options.int8_budget``, the
    layers kept float are searched for this checkpoint (``quantize.search_int8``)."""
    from ...config import int8_recipe
    from ...int8 import float_kinds
    from ..onnx.convert import export_fp32

    workdir = Path(workdir)
    model, calibration, channels = with_channel_order(model, calibration, options)
    with tempfile.TemporaryDirectory(prefix="tflite-onnx-", dir=workdir) as tmp:
        onnx_path = export_fp32(model, Path(tmp) / "model.onnx", size=sizes[0], exporter=options.exporter,
                                dynamic_batch=False)
        search = "int8" in precisions and options.int8_budget is not None
        float_precisions = tuple(p for p in precisions if p != "int8") or ("fp32",)
        if search and "fp32" not in float_precisions:  # the search's reference
            float_precisions = ("fp32", *float_precisions)
        saved = Path(tmp) / "saved_model" if "int8" in precisions else None
        made = onnx_to_tflite(onnx_path, Path(tmp) / "onnx2tf", precisions=float_precisions,
                              calibration=calibration, saved_model=saved)
        results = {}
        for p in precisions:
            if p == "int8" and search:
                from ...publish import write_int8_search

                results[p], searched = search_int8(model, saved, made["fp32"], calibration, options.int8_budget,
                                                   Path(tmp) / "search", sizes[0], workdir / "model_int8.tflite",
                                                   labels=options.heldout_labels, objective=options.int8_objective)
                write_int8_search(results[p], searched)  # the pipeline puts it in the manifest
            elif p == "int8":
                results[p] = full_int8(model, workdir / "model_int8.tflite", calibration, saved,
                                       float_kinds("tflite", p, options.float_kinds),
                                       float_ops=int8_recipe("tflite", p).float_ops)
            else:
                results[p] = Path(shutil.move(str(made[p]), workdir / made[p].name))
    for p, path in results.items():
        write_metadata(path, model, channels, options, precision=p)
    return results


def metadata_options(*, task: str, output_kind: str, names: list[str], card: dict, provenance: dict,
                     preprocessing: dict) -> dict:
    """MediaPipe image-classifier (or, for segmentation logits, image-segmenter) metadata with labels.txt, and
    the provenance in our own entry."""
    if task == "segmentation":
        return {"labels": tuple(names), "metadata": {**provenance, "labels": names}}
    return {"labels": tuple(names), "metadata": provenance}


def with_channel_order(model, calibration: np.ndarray | None, options: TFLiteOptions):
    """``(model, calibration, channels)`` as the artifact will take its input; ``channels`` is
    ``{"channel_order": artifact's, "reference_channel_order": the given model's}``.

    RGB: a copy of a MobileViT with its stem's input channels reversed (its ``cfg`` says RGB) and the
    calibration photos ``[N, 3, H, W]`` flipped to match. Anything else (``model``, the as-is exporter, a model
    that is not ours) is left as it is."""
    pre = getattr(getattr(model, "cfg", None), "preprocessing", None)
    given = pre.channel_order if pre is not None else "model"
    channels = {"channel_order": given, "reference_channel_order": given}
    if pre is None or options.channel_order == "model" or options.exporter != "ours" or given == options.channel_order:
        return model, calibration, channels
    from mobilevit.rewrites import reverse_input_channels

    flipped = reverse_input_channels(copy.deepcopy(model))
    flipped.cfg = replace(model.cfg, preprocessing=replace(pre, channel_order=options.channel_order))
    if calibration is not None:
        calibration = np.ascontiguousarray(calibration[:, ::-1])  # [N, 3, H, W]: BGR <-> RGB
    return flipped, calibration, {**channels, "channel_order": options.channel_order}


def _output_shape(buf: bytes) -> tuple[int, ...]:
    """The shape of the first output of a ``.tflite`` flatbuffer."""
    from ai_edge_litert import schema_py_generated as schema

    graph = schema.Model.GetRootAsModel(buf, 0).Subgraphs(0)
    return tuple(int(d) for d in graph.Tensors(graph.Outputs(0)).ShapeAsNumpy())


def write_metadata(path: Path, model, channels: dict, options: TFLiteOptions, precision: str) -> None:
    """Our JSON entry (always; the runners read the channel orders and the output layout), then, given
    ``options.labels``, MediaPipe's image-classifier metadata (logits ``[1, K]``) or image-segmenter metadata
    (logits ``[1, h, w, K]``); a class map gets none. ``model`` is the one converted (its ``cfg`` says its order)."""
    from . import metadata as md

    cfg = getattr(model, "cfg", None)
    pre = cfg.preprocessing.describe() if cfg is not None else {}
    out_rank = len(_output_shape(path.read_bytes()))
    entry = {**options.metadata, **channels, "input_layout": "NHWC float32", "precision": precision,
             **({"output_layout": "NHWC"} if out_rank == 4 else {}),  # onnx2tf moves channels last
             **({"preprocessing": pre} if pre else {})}  # ours last: the caller's fields cannot hide them
    buf = md.add_entry(path.read_bytes(), md.ENTRY, json.dumps(entry, sort_keys=True).encode())
    if options.labels and out_rank in (2, 4):  # logits of a classifier / of a segmenter (not a class map)
        if channels["channel_order"] != "RGB":
            raise ExportConfigError("MediaPipe metadata can only describe RGB input: export with "
                                    "channel_order='RGB', or without labels")
        k = len(options.labels)
        if out_rank == 2:
            buf = md.image_classifier(buf, list(options.labels), name=f"MobileViT {cfg.name}",
                                      pixel_scale=cfg.preprocessing.pixel_scale,
                                      description=f"MobileViT image classifier, {k} classes; outputs logits "
                                                  "(no softmax)")
        else:
            buf = md.image_segmenter(buf, list(options.labels), name=f"DeepLabV3-MobileViT {cfg.name}",
                                     pixel_scale=cfg.preprocessing.pixel_scale,
                                     description=f"DeepLabV3-MobileViT semantic segmentation, {k} classes; outputs "
                                                 "logits at 1/16 of the input (no softmax)")
    path.write_bytes(buf)


def _offline_calibration_file(folder: Path, images: np.ndarray) -> None:
    """onnx2tf's own 20x128x128x3 sample file, made from our photos so it never downloads it."""
    import torch
    import torch.nn.functional as F

    x = torch.from_numpy(images[:20].astype(np.float32))
    while len(x) < 20:
        x = torch.cat([x, x.flip(-1)])[:20]
    small = F.interpolate(x, size=(128, 128), mode="bilinear", align_corners=False).clamp(0, 1)
    np.save(folder / CALIBRATION_FILE, _nhwc(small.numpy()))  # [20, 128, 128, 3] in [0, 1]


def onnx_to_tflite(onnx_path: str | Path, out_dir: str | Path, *, precisions=("fp32", "fp16"),
                   calibration: np.ndarray | None = None, timeout: float = 1800, log=None,
                   saved_model: str | Path | None = None) -> dict[str, Path]:
    """Convert an ONNX file with onnx2tf; return ``{precision: path}`` for the requested precisions.

    ``calibration`` is a float32 ``[N, 3, H, W]`` batch of real photos in the model's input
    format; it is required (it also feeds the offline calibration file, even for float exports).
    ``saved_model``: a folder to keep the TensorFlow SavedModel of onnx2tf's Keras model (as ``-osd`` writes
    it), the starting point of :func:`full_int8`. Only what is asked for is converted (``onnx2tf_driver``).
    """
    unknown = set(precisions) - set(FLOAT_PRECISIONS)
    if unknown:
        raise ExportConfigError(f"onnx2tf makes {', '.join(FLOAT_PRECISIONS)}, not {sorted(unknown)}")
    if calibration is None or len(calibration) == 0:
        raise ExportConfigError("onnx_to_tflite needs calibration photos (float32 [N, 3, H, W])")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="onnx2tf-", dir=out_dir) as tmp:
        work = Path(tmp)
        _offline_calibration_file(work, calibration)
        np.save(work / "sample.npy", np.ascontiguousarray(calibration[:1], dtype=np.float32))  # [1, 3, H, W]
        spec = {"onnx": str(Path(onnx_path).resolve()), "out": str(work / "out"), "precisions": list(precisions),
                "saved_model": saved_model is not None, "sample": str(work / "sample.npy")}
        (work / "spec.json").write_text(json.dumps(spec))
        # -P: the script's folder (which holds modules named like TensorFlow's) is not put on sys.path
        cmd = [sys.executable, "-P", str(Path(__file__).with_name("onnx2tf_driver.py")), str(work / "spec.json")]
        env = dict(os.environ)
        env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
        env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        proc = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True, timeout=timeout)
        if log is not None:
            log.write(proc.stdout[-4000:])
        results = {}
        for precision in precisions:
            produced = work / "out" / f"model_{precision}.tflite"
            if proc.returncode != 0 or not produced.exists():
                tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-25:])
                raise TFLiteConversionError(
                    f"onnx2tf did not produce the {precision} model (exit {proc.returncode}):\n{tail}")
            dest = out_dir / f"model_{precision}.tflite"
            shutil.move(str(produced), dest)
            results[precision] = dest
        if saved_model is not None:
            _keep_saved_model(work / "out" / "saved_model", Path(saved_model))
    return results


def _keep_saved_model(folder: Path, dest: Path) -> None:
    if not (folder / "saved_model.pb").exists():
        raise TFLiteConversionError(f"onnx2tf wrote no SavedModel in {folder}")
    if dest.exists():
        shutil.rmtree(dest)
    shutil.move(str(folder), dest)
