"""ONNX precisions derived from the fp32 model (fp16, static QDQ int8, dynamic int8), and which ONNX nodes
compute each ``mobilevit.layers`` layer (what static int8 quantizes). Shared by the converter and the int8
layer search (``search``)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ...errors import ExportConfigError
from ...int8 import LayerOp, match_layers, ops_of_kinds
from ...quiet import quiet

INPUT_NAME = "input"  # the exported model's input (export.targets.onnx.convert)

def int8_layers(model: torch.nn.Module, fp32_path: Path, float_kinds: tuple[str, ...] | None) -> list[str]:
    """The ONNX nodes static int8 quantizes: those of every layer whose kind is not kept in float."""
    import onnx

    from mobilevit.layers import KINDS

    from ...int8 import float_kinds as kept_float

    kept = kept_float("onnx", "int8", float_kinds)
    return ops_of_kinds(layer_nodes(onnx.load(str(fp32_path)), model), [k for k in KINDS if k not in kept])


def layer_nodes(graph, model: torch.nn.Module):
    """Each ``mobilevit.layers`` layer with its ONNX node names (``export.int8.match_layers``).

    Weight-bearing nodes: Conv, Gemm, MatMul with a constant weight (as the module's, or transposed);
    a MatMul between two activations is an attention product.
    """
    consts = {i.name: tuple(i.dims) for i in graph.graph.initializer}

    def read(node) -> LayerOp | None:
        weight = next((consts[i] for i in node.input[1:2] if i in consts), None)
        if node.op_type in ("Conv", "Gemm") or (node.op_type == "MatMul" and weight is not None):
            return LayerOp(node.name, node.op_type, "conv" if node.op_type == "Conv" else "linear", weight)
        return LayerOp(node.name, node.op_type, "matmul", None) if node.op_type == "MatMul" else None

    ops = [op for op in map(read, graph.graph.node) if op is not None]
    return match_layers("onnx", model, ops, lambda m: (tuple(m.weight.shape), tuple(m.weight.shape)[::-1]))


class _PhotoReader:
    """onnxruntime calibration reader over a float32 ``[N, 3, H, W]`` array, one image per batch."""

    def __init__(self, images: np.ndarray):
        self.images = images.astype(np.float32)
        self.i = 0

    def get_next(self):
        if self.i >= len(self.images):
            return None
        self.i += 1
        return {INPUT_NAME: self.images[self.i - 1:self.i]}

    def rewind(self):
        self.i = 0


# our calibration method names -> onnxruntime's (export.config.Int8Recipe.calibration)
CALIBRATION_METHODS = {"minmax": "MinMax", "percentile": "Percentile", "entropy": "Entropy"}


def convert_onnx_precision(fp32_path: str | Path, out_path: str | Path, precision: str,
                           calibration: np.ndarray | None = None, int8_nodes: list[str] | None = None,
                           calibration_cache: Path | None = None) -> Path:
    """Derive an fp16, static-int8 (QDQ) or dynamic-int8 model from an fp32 one.

    * ``fp16``: weights and activations in fp16, fp32 input/output (``keep_io_types``).
    * ``int8``: static QDQ, per-channel 8-bit weights, uint8 activations calibrated on ``calibration``
      (real photographs) by the recipe's method (``export.config.INT8_RECIPES``); only ``int8_nodes``
      (Conv / MatMul / Gemm nodes of the layers the recipe quantizes, :func:`int8_layers`) are
      quantized; LayerNorm, Softmax, SiLU and the other layers stay in float. ``calibration_cache``: a
      file onnxruntime keeps every calibrated range in (written by the first call, read by the next ones
      on the same fp32 model and photos: the int8 search quantizes many layer sets on one calibration).
      Weights are uint8 (U8U8), not int8: on x86 CPUs without VNNI (AVX2 only, e.g. AMD Zen 3) onnxruntime's
      U8S8 kernels add pairs of products in saturating 16 bits (VPMADDUBSW), which took xx_small's worst
      cosine from 0.99778 to 0.98327; its U8U8 kernels do not saturate and gave 0.99778 there, as U8S8 does on
      VNNI CPUs (onnxruntime's quantization guide names both fixes; ``reduce_range``'s 7-bit weights gave 0.99448).
    * ``int8_dynamic``: int8 MatMul/Gemm weights, activations quantized at run time.
    """
    import onnx

    fp32_path, out_path = Path(fp32_path), Path(out_path)
    if precision == "fp32":
        onnx.save(onnx.load(str(fp32_path)), str(out_path))
    elif precision == "fp16":
        from onnxruntime.transformers.float16 import convert_float_to_float16

        model = convert_float_to_float16(onnx.load(str(fp32_path)), keep_io_types=True)
        onnx.save(model, str(out_path))
    elif precision == "int8":
        from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

        from ...config import int8_recipe

        cached = calibration_cache is not None and Path(calibration_cache).is_file()
        if not cached and (calibration is None or len(calibration) == 0):
            raise ValueError("static int8 quantization needs calibration images")
        if not int8_nodes:
            raise ExportConfigError("int8 has nothing to quantize: every layer kind is kept in float "
                                    "(drop some from --float-kinds)")
        method = CALIBRATION_METHODS[int8_recipe("onnx", "int8").calibration]
        with quiet(stdout=True):  # the histogram calibrators print their progress
            quantize_static(str(fp32_path), str(out_path), None if cached else _PhotoReader(calibration),
                            quant_format=QuantFormat.QDQ, per_channel=True,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QUInt8,
                            op_types_to_quantize=["Conv", "MatMul", "Gemm"], nodes_to_quantize=list(int8_nodes),
                            calibrate_method=getattr(CalibrationMethod, method),
                            calibration_cache_path=calibration_cache)
    elif precision == "int8_dynamic":
        from onnxruntime.quantization import QuantType, quantize_dynamic

        with quiet(stdout=True):  # onnxruntime's "consider pre-processing" warning
            quantize_dynamic(str(fp32_path), str(out_path), weight_type=QuantType.QInt8,
                             op_types_to_quantize=["MatMul", "Gemm"])
    else:
        raise ValueError(f"unknown ONNX precision {precision!r}")
    return out_path
