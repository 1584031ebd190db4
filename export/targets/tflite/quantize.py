"""Selective full-integer TFLite quantization of the SavedModel an onnx2tf run wrote (``convert.onnx_to_tflite``):
the graph's ops matched to the model's layers, one calibration, and any ops kept float: the recipe's kinds
(``full_int8``) or the layers a search chose for this checkpoint (``TFLiteLayerSearch``, ``search_int8``)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from torch import nn

from ...config import int8_recipe
from ...errors import ExportConfigError
from ...int8 import LayerMatchError, LayerOp, match_layers, ops_of_kinds
from ...int8search import LayerSearch, choose
from .runner import LiteRTRunner


def _nhwc(images: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(images.transpose(0, 2, 3, 1)).astype(np.float32)  # [N,3,H,W] -> [N,H,W,3]


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


def full_int8(model, out_path: str | Path, calibration: np.ndarray, saved_model: str | Path,
              float_kinds: tuple[str, ...] = (), *, float_ops: tuple[str, ...] = DEFAULT_FLOAT_OPS) -> Path:
    """A full-integer TFLite of ``model`` keeping ``float_kinds`` (``mobilevit.layers`` kinds) and the op
    types ``float_ops`` in float; float input and output (NHWC). Returns ``out_path``.

    ``model`` is the MobileViT the graph came from (its layers name the kinds); ``saved_model`` the SavedModel
    of its onnx2tf run (``convert.onnx_to_tflite(..., saved_model=...)``).

    Keep ``attn_matmul`` in float unless measured otherwise: the attn.v matmul takes softmax
    probabilities quantized with scale 1/256, so 1/N for N = 256 tokens is one step (xx_small,
    synthetic weights: cosine 0.71 with that kind alone in int8; REPORT_tflite_int8.md).
    """
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    calibrated = calibrate(saved_model, calibration)
    out_path.write_bytes(quantize(calibrated, *denylist(model, calibrated, float_kinds, float_ops)))
    return out_path


# ---------------------------------------------------------------------------------------------
# The int8 search (``export.int8search``): the calibrated model quantized with any set of layers int8 (the
# others denylisted, as ``full_int8`` keeps the recipe's kinds float), measured in LiteRT (XNNPACK) on
# held-out photos against the fp32 ``.tflite`` of the same onnx2tf run.
# ---------------------------------------------------------------------------------------------


class TFLiteLayerSearch(LayerSearch):
    """``model``'s onnx2tf SavedModel (``saved_model``) and fp32 ``.tflite`` (``fp32``) from one onnx2tf run,
    calibration and held-out photos (both ``[N, 3, H, W]`` in the artifact's channel order). The op types the
    int8 recipe keeps float (``export.config.INT8_RECIPES``: every op without a layer kind, LayerNorm, softmax)
    stay float in every set; the layers are what is searched."""

    runner = LiteRTRunner

    def __init__(self, model: nn.Module, saved_model: Path, fp32: Path, calibration: np.ndarray,
                 heldout: np.ndarray, work: Path, labels: np.ndarray | None = None, threads: int = 1):
        self.calibrated = calibrate(saved_model, calibration)
        matches = map_kinds(model, self.calibrated)
        self.nodes = {layer.name: outputs for layer, outputs in matches}  # each layer's ops, by output tensor
        self.float_types, self.float_nodes = denylist(model, self.calibrated, (),
                                                      int8_recipe("tflite", "int8").float_ops)
        super().__init__(model, fp32, list(self.nodes), {layer.name: layer.kind for layer, _ in matches}, heldout, work,
                         labels, threads)
        self.n = 0

    def quantize(self, int8_layers: list[str]) -> Path:
        self.n += 1
        keep = set(int8_layers)
        floats = self.float_nodes + [o for name, outs in self.nodes.items() if name not in keep for o in outs]
        out = self.work / f"int8_{self.n}.tflite"
        out.write_bytes(quantize(self.calibrated, self.float_types, floats))
        return out


def search_int8(model: nn.Module, saved_model: Path, fp32: Path, calibration: np.ndarray, budget: str,
                work: Path, size: int, out: Path, labels: tuple[int, ...] | None = None,
                objective: str = "speed") -> tuple[Path, dict]:
    """``(out, record)``: the full-int8 ``.tflite`` with the layers this checkpoint keeps int8 under ``budget``
    (``export.int8search.choose``), calibrated on the photos the search did not hold out."""
    s, int8, _, record = choose(lambda c, h, y: TFLiteLayerSearch(model, saved_model, fp32, c, h, work, labels=y),
                                model, size, calibration, budget, "tflite", "int8", labels, objective)
    Path(s.quantize(int8)).replace(out)
    return out, record
