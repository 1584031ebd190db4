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
from ...int8 import Int8Options, LayerMatchError, LayerOp, match_layers, ops_of_kinds

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
    and op types (``export.config.INT8_RECIPES``) or ``options.float_kinds``."""
    from ...config import int8_recipe
    from ...int8 import float_kinds
    from ..onnx.convert import export_fp32

    workdir = Path(workdir)
    model, calibration, channels = with_channel_order(model, calibration, options)
    with tempfile.TemporaryDirectory(prefix="tflite-onnx-", dir=workdir) as tmp:
        onnx_path = export_fp32(model, Path(tmp) / "model.onnx", size=sizes[0], exporter=options.exporter,
                                dynamic_batch=False)
        float_precisions = tuple(p for p in precisions if p != "int8") or ("fp32",)
        saved = Path(tmp) / "saved_model" if "int8" in precisions else None
        made = onnx_to_tflite(onnx_path, Path(tmp) / "onnx2tf", precisions=float_precisions,
                              calibration=calibration, saved_model=saved)
        results = {}
        for p in precisions:
            if p == "int8":
                results[p] = full_int8(model, workdir / "model_int8.tflite", calibration,
                                       float_kinds("tflite", p, options.float_kinds),
                                       float_ops=int8_recipe("tflite", p).float_ops, saved_model=saved)
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


def _nhwc(images: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(images.transpose(0, 2, 3, 1)).astype(np.float32)  # [N,3,H,W] -> [N,H,W,3]


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


# ---------------------------------------------------------------------------------------------
# Selective full-integer quantization: int8 where it pays, float where the measurements say.
#
# onnx2tf's own full-int8 model (``-oiqt``) quantizes every op, LayerNorm's mean/variance, softmax
# and SiLU included; those int8 ops run on the built-in kernels (55 XNNPACK partitions) and lose
# the accuracy (REPORT_tflite_int8.md). Here the SavedModel onnx2tf writes is calibrated once with
# TensorFlow's TFLiteConverter (representative dataset = our photos), then quantized by TensorFlow's
# MLIR quantizer with a denylist: the ops of the float kinds (``mobilevit.layers``) and the float
# op types stay in float. Kinds map to TFLite ops by execution order of the weight-bearing ops.
# ---------------------------------------------------------------------------------------------

# The TFLite ops that carry a mobilevit.layers kind, per op family of mobilevit.layers.KINDS.
KIND_OPS = {"conv": ("CONV_2D", "DEPTHWISE_CONV_2D"), "linear": ("FULLY_CONNECTED",), "matmul": ("BATCH_MATMUL",)}
WEIGHTED_OPS = tuple(op for ops in KIND_OPS.values() for op in ops)
ALL_OTHER_OPS = "*"  # in ``float_ops``: every op that carries no kind stays float
# in ``float_ops``: every op of a LayerNorm (onnx2tf names them ``.../layer_normalization_N/...``):
# MEAN, SQUARED_DIFFERENCE, ADD eps, RSQRT, SUB, MUL, ADD
LAYER_NORM = "LAYER_NORM"
# What stays float by default, measured (REPORT_tflite_int8.md): in int8, SOFTMAX and LayerNorm's
# SQUARED_DIFFERENCE / eps ADD / RSQRT run on the built-in kernels (55 XNNPACK partitions).
DEFAULT_FLOAT_OPS = ("SOFTMAX", LAYER_NORM)


@dataclass(frozen=True)
class GraphOp:
    """One operator of a TFLite flatbuffer (subgraph 0), in execution order."""

    index: int
    op: str  # builtin name: CONV_2D, FULLY_CONNECTED, ...
    output: str  # name of its first output tensor (what the quantizer's denylist names)
    weight_shape: tuple[int, ...] | None  # shape of its second input when that is a constant


def graph_ops(tflite: bytes) -> list[GraphOp]:
    """The operators of a ``.tflite`` flatbuffer in execution order."""
    from ai_edge_litert import schema_py_generated as schema

    model = schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(tflite, 0))
    names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    graph = model.subgraphs[0]
    out = []
    for i, op in enumerate(graph.operators):
        code = model.operatorCodes[op.opcodeIndex]
        name = names.get(max(code.builtinCode, code.deprecatedBuiltinCode), "CUSTOM")
        weight = None
        if len(op.inputs) > 1 and op.inputs[1] >= 0:
            t = graph.tensors[op.inputs[1]]
            if model.buffers[t.buffer].data is not None:  # a constant: the weights
                weight = tuple(int(d) for d in (t.shape if t.shape is not None else ()))
        out.append(GraphOp(i, name, graph.tensors[op.outputs[0]].name.decode(), weight))
    return out


def _tflite_weight_shape(module) -> tuple[int, ...]:
    """The TFLite shape of a torch Conv2d / Linear weight (NHWC kernels: [O, kh, kw, I], depthwise [1, kh, kw, O])."""
    w = tuple(module.weight.shape)
    if len(w) == 2:
        return w  # FULLY_CONNECTED [out, in]
    o, i, kh, kw = w
    if module.groups == o and i == 1 and module.groups > 1:
        return (1, kh, kw, o)
    return (o, kh, kw, i)


def map_kinds(model, tflite: bytes):
    """Each ``mobilevit.layers`` layer with the output-tensor names of its TFLite ops
    (``export.int8.match_layers``): CONV_2D / DEPTHWISE_CONV_2D and FULLY_CONNECTED with a constant weight
    (in TFLite's layout); a BATCH_MATMUL without one is an attention product."""
    family = {op: fam for fam, ops in KIND_OPS.items() for op in ops}
    ops = [LayerOp(op.output, op.op, family[op.op], op.weight_shape) for op in graph_ops(tflite)
           if op.op in WEIGHTED_OPS]
    return match_layers("tflite", model, ops, lambda module: (_tflite_weight_shape(module),))


def calibrate(saved_model: str | Path, calibration: np.ndarray) -> bytes:
    """A float TFLite model with calibration statistics (TFLiteConverter, MLIR quantizer), not yet quantized.

    ``calibration``: float32 ``[N, 3, H, W]`` photos (the SavedModel takes NHWC, as onnx2tf writes it)."""
    import tensorflow as tf

    images = _nhwc(calibration)

    def representative():
        for i in range(len(images)):
            yield [images[i:i + 1]]

    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved_model))
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = representative
    converter.experimental_mlir_quantizer = True
    converter._experimental_calibrate_only = True  # what tf.lite.experimental.QuantizationDebugger does
    return converter.convert()


def denylist(model, calibrated: bytes, float_kinds=(), float_ops=DEFAULT_FLOAT_OPS) -> tuple[list[str], list[str]]:
    """``(op types, node names)`` to keep in float: the op types ``float_ops`` (``ALL_OTHER_OPS`` = every
    op type that carries no kind) and the output-tensor names of the ops of ``float_kinds``.

    Op types that carry kinds are never denylisted by type (that would float every kind at once);
    other op types are denylisted by type, because the quantizer does not match a multi-output op
    (SPLIT) by its tensor name."""
    from ai_edge_litert import schema_py_generated as schema
    from torch import nn

    from mobilevit.layers import check_kinds

    float_kinds = set(check_kinds(float_kinds))
    graph = graph_ops(calibrated)
    if ALL_OTHER_OPS in float_ops:
        types = list(dict.fromkeys(op.op for op in graph if op.op not in WEIGHTED_OPS))
    else:
        types = [t for t in float_ops if t != LAYER_NORM]
        unknown = [t for t in types if not hasattr(schema.BuiltinOperator, t)]
        if unknown:
            raise ExportConfigError(f"{unknown} are not TFLite builtin op names (e.g. SOFTMAX, LOGISTIC, MUL), "
                                    f"nor {LAYER_NORM!r} or {ALL_OTHER_OPS!r}")
        bad = [t for t in types if t in WEIGHTED_OPS]
        if bad:
            raise ExportConfigError(f"{bad} carry layer kinds: keep them in float with float_kinds, not float_ops")
    names = ops_of_kinds(map_kinds(model, calibrated), float_kinds)
    if LAYER_NORM in float_ops:
        norms = [op.output for op in graph if "layer_normalization" in op.output and op.op not in WEIGHTED_OPS]
        if not norms and any(isinstance(m, nn.LayerNorm) for m in model.modules()):
            raise LayerMatchError("tflite: no op named .../layer_normalization... in the graph: "
                                   "cannot keep LayerNorm in float")
        names += norms
    return types, names


def quantize(calibrated: bytes, float_op_types=(), float_node_names=()) -> bytes:
    """Int8 (per-channel weights, float I/O) except the op types and the ops (by output tensor) named."""
    from tensorflow.lite.python import convert as tf_convert

    return tf_convert.mlir_quantize(calibrated, disable_per_channel=False, fully_quantize=False,
                                    denylisted_ops=list(float_op_types) or None,
                                    denylisted_nodes=list(float_node_names) or None)


def full_int8(model, out_path: str | Path, calibration: np.ndarray, float_kinds: tuple[str, ...] = (), *,
              float_ops: tuple[str, ...] = DEFAULT_FLOAT_OPS, saved_model: str | Path | None = None,
              size: int = 256, exporter: str = "ours") -> Path:
    """A full-integer TFLite of ``model`` keeping ``float_kinds`` (``mobilevit.layers`` kinds) and the op
    types ``float_ops`` in float; float input and output (NHWC). Returns ``out_path``.

    ``model`` is the MobileViT the graph came from (its layers name the kinds). ``saved_model`` reuses
    the SavedModel of an earlier onnx2tf run (``onnx_to_tflite(..., saved_model=...)``); without it,
    the model is exported to ONNX and converted by onnx2tf here.

    Keep ``attn_matmul`` in float unless measured otherwise: the attn.v matmul takes softmax
    probabilities quantized with scale 1/256, so 1/N for N = 256 tokens is one step (xx_small,
    synthetic weights: cosine 0.71 with that kind alone in int8; REPORT_tflite_int8.md).
    """
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="full-int8-", dir=out_path.parent) as tmp:
        if saved_model is None:
            from ..onnx.convert import export_fp32

            onnx_path = export_fp32(model, Path(tmp) / "model.onnx", size=size, exporter=exporter,
                                    dynamic_batch=False)
            saved_model = Path(tmp) / "saved_model"
            onnx_to_tflite(onnx_path, Path(tmp) / "tflite", precisions=("fp32",), calibration=calibration,
                           saved_model=saved_model)
        calibrated = calibrate(saved_model, calibration)
        out_path.write_bytes(quantize(calibrated, *denylist(model, calibrated, float_kinds, float_ops)))
    return out_path
