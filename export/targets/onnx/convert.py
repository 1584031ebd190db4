"""ONNX export: opset 18 through torch.export, single file, simplified; fp16 and int8 variants.

``convert`` is this target's entry in the registry (``export.config``); call it through
``export.convert``. ``exporter="as-is"`` is the way most users export a model today (the
TorchScript exporter at opset 17, no simplification): the benchmarks' baseline rows use it.
"""
from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from mobilevit import DEFAULT_SIZE

from ...errors import ExportConfigError
from ...int8 import Int8Options, LayerOp, match_layers, ops_of_kinds
from ...quiet import quiet

OPSET = 18
AS_IS_OPSET = 17
INPUT_NAME = "input"
OUTPUT_NAME = "logits"
EXPORTERS = ("ours", "as-is")


@dataclass(frozen=True)
class OnnxOptions(Int8Options):
    """ONNX-only choices (keyword arguments of ``export.convert(model, "onnx", ...)``); ``float_kinds``: see
    ``export.int8.Int8Options``."""

    target = "onnx"
    dynamic_batch: bool = True
    dynamic_hw: bool = False  # symbolic height/width, multiples of 64
    exporter: str = "ours"  # ours: torch.export, opset 18, onnxsim | as-is: TorchScript exporter, opset 17
    labels: tuple[str, ...] | None = None  # class names, written to metadata_props["labels"] (JSON list)
    metadata: dict[str, str] = field(default_factory=dict)  # more metadata_props (preprocessing, provenance)

    def __post_init__(self):
        super().__post_init__()
        check_exporter(self.exporter)
        if self.dynamic_hw and self.exporter != "ours":
            raise ExportConfigError("dynamic height/width needs exporter='ours'")


def check_exporter(exporter: str) -> str:
    if exporter not in EXPORTERS:
        raise ExportConfigError(f"unknown ONNX exporter {exporter!r}; choose one of: {', '.join(EXPORTERS)}")
    return exporter


def export_fp32(model: torch.nn.Module, path: Path, *, size: int, exporter: str = "ours", dynamic_batch: bool = True,
                dynamic_hw: bool = False) -> Path:
    """The fp32 ONNX file every other precision (and onnx2tf) starts from, by ``exporter``."""
    if exporter == "as-is":
        return export_onnx_as_is(model, path, size=size)
    return export_onnx(model, path, size=size, dynamic_batch=dynamic_batch, dynamic_hw=dynamic_hw)


def convert(model: torch.nn.Module, precisions: tuple[str, ...], workdir: Path, *, sizes: tuple[int, ...],
            calibration: np.ndarray | None, options: OnnxOptions) -> dict[str, Path]:
    """One fp32 export, then every requested precision derived from it: ``{precision: .onnx}``."""
    workdir = Path(workdir)
    with tempfile.TemporaryDirectory(prefix="onnx-fp32-", dir=workdir) as scratch:
        fp32 = export_fp32(model, Path(scratch) / "fp32.onnx", size=sizes[0], exporter=options.exporter,
                           dynamic_batch=options.dynamic_batch, dynamic_hw=options.dynamic_hw)
        layers = int8_layers(model, fp32, options.float_kinds) if "int8" in precisions else None
        made = {p: convert_onnx_precision(fp32, workdir / f"model_{p}.onnx", p, calibration=calibration,
                                          int8_nodes=layers)
                for p in precisions}
    if options.labels or options.metadata:
        for path in made.values():
            write_metadata(path, options.labels, options.metadata)
    return made


def metadata_options(*, task: str, output_kind: str, names: list[str], card: dict, provenance: dict,
                     preprocessing: dict) -> dict:
    """Labels, preprocessing and provenance for ``metadata_props`` (onnxruntime's ``get_modelmeta``)."""
    return {"labels": tuple(names), "metadata": {**provenance, "preprocessing": json.dumps(preprocessing),
                                                  "input_layout": "NCHW float32"}}


def write_metadata(path: Path, labels: tuple[str, ...] | None, metadata: dict[str, str]) -> None:
    """Set the model's ``metadata_props`` (what onnxruntime's ``get_modelmeta().custom_metadata_map`` returns):
    ``labels`` as a JSON list, index = class id, and every ``metadata`` field as a string."""
    import json

    import onnx

    model = onnx.load(str(path))
    props = {**({"labels": json.dumps(list(labels))} if labels else {}), **{k: str(v) for k, v in metadata.items()}}
    del model.metadata_props[:]
    for key, value in props.items():
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, str(path))


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


def export_onnx(model: torch.nn.Module, path: str | Path, *, size: int = DEFAULT_SIZE, dynamic_batch: bool = True,
                dynamic_hw: bool = False, simplify: bool = True) -> Path:
    """Write ``model`` ([B, 3, H, W] -> logits) as one fp32 ONNX file at ``path``.

    ``dynamic_hw`` makes height and width symbolic multiples of 64 (64 ... 512): that keeps every
    MobileViT grid even, so no resize branch is baked into the graph.
    """
    path = Path(path)
    model = model.eval()
    x = torch.zeros(1, 3, size, size)
    dims: dict[int, object] = {}
    if dynamic_batch:
        dims[0] = torch.export.Dim("batch", min=1, max=1024)
    if dynamic_hw:
        if size % 64:
            raise ValueError(f"dynamic height/width needs an example size that is a multiple of 64, got {size}")
        dims[2] = 64 * torch.export.Dim("h64", min=1, max=8)
        dims[3] = 64 * torch.export.Dim("w64", min=1, max=8)
    kwargs = dict(dynamo=True, external_data=False, opset_version=OPSET, input_names=[INPUT_NAME],
                  output_names=[OUTPUT_NAME], optimize=True)
    if dims:
        kwargs["dynamic_shapes"] = (dims,)
    with quiet(stdout=True), torch.no_grad():  # torch.onnx's progress lines and warnings
        torch.onnx.export(model, (x,), str(path), **kwargs)
    if simplify:
        simplify_onnx(path)
    return path


def export_onnx_as_is(model: torch.nn.Module, path: str | Path, *, size: int = DEFAULT_SIZE) -> Path:
    """``torch.onnx.export(dynamo=False, opset_version=17)`` with no simplification: a model as most export it."""
    with quiet(stdout=True), torch.no_grad():  # torch.onnx's progress lines and warnings
        torch.onnx.export(model.eval(), (torch.zeros(1, 3, size, size),), str(path), dynamo=False,
                          opset_version=AS_IS_OPSET, input_names=[INPUT_NAME], output_names=[OUTPUT_NAME])
    return Path(path)


def simplify_onnx(path: str | Path) -> Path:
    """Run onnxsim in place; a model it cannot prove equal is an error, not a silent keep."""
    import onnx
    import onnxsim

    model = onnx.load(str(path))
    simplified, ok = onnxsim.simplify(model)
    if not ok:
        raise RuntimeError(f"onnxsim could not validate the simplified graph of {path}")
    onnx.save(simplified, str(path))
    return Path(path)


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
    * ``int8``: static QDQ, per-channel int8 weights, uint8 activations calibrated on ``calibration``
      (real photographs) by the recipe's method (``export.config.INT8_RECIPES``); only ``int8_nodes``
      (Conv / MatMul / Gemm nodes of the layers the recipe quantizes, :func:`int8_layers`) are
      quantized; LayerNorm, Softmax, SiLU and the other layers stay in float. ``calibration_cache``: a
      file onnxruntime keeps every calibrated range in (written by the first call, read by the next ones
      on the same fp32 model and photos: the int8 search quantizes many layer sets on one calibration).
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
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
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
