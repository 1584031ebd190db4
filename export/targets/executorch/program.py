"""Making ExecuTorch programs: ``torch.export`` -> (PT2E int8) -> edge dialect -> a delegated ``.pte``.

The options a user gives (:class:`ExecuTorchOptions`), the int8 layer filter (:func:`layer_filter`), PT2E
quantization with the XNNPACK quantizer (:func:`pt2e_int8`), and lowering to a backend (:func:`lower`).
``convert.convert`` (the registry's converter) and the int8 search (``search.py``) make their programs here.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ...int8 import Int8Options
from ...quiet import quiet

DEPLOYMENT_TARGETS = ("iOS16", "iOS17", "iOS18")
EXPORTERS = ("ours", "as-is")


@dataclass(frozen=True)
class ExecuTorchOptions(Int8Options):
    """ExecuTorch-only choices (keyword arguments of ``export.convert(model, "executorch", ...)``);
    ``float_kinds``: see ``export.int8.Int8Options``."""

    target = "executorch"
    coreml_deployment_target: str = "iOS17"  # minimum OS of the coreml-fp16 program
    # ours: the registry's model rewrites first | as-is: the model exactly as given (the benchmarks' baseline)
    exporter: str = "ours"

    def __post_init__(self):
        from ...errors import ExportConfigError

        super().__post_init__()
        if self.exporter not in EXPORTERS:
            raise ExportConfigError(f"unknown ExecuTorch exporter {self.exporter!r}; "
                                    f"choose one of: {', '.join(EXPORTERS)}")
        if self.coreml_deployment_target not in DEPLOYMENT_TARGETS:
            raise ExportConfigError(f"unknown Core ML deployment target {self.coreml_deployment_target!r}; "
                                    f"choose one of: {', '.join(DEPLOYMENT_TARGETS)}")



def _export(model: torch.nn.Module, example: torch.Tensor):
    return torch.export.export(model, (example,), strict=False)


def node_layer(node: torch.fx.Node) -> str | None:
    """The ``mobilevit.layers`` layer an exported conv / linear / bmm node computes (``None``: no layer).

    Read from the node's module stack: the innermost module that is a layer, or for a ``bmm`` the
    attention it runs in (``<attn>.matmul``). The LayerNorm rewrite's mean/variance linears are no layer.
    """
    from mobilevit.layers import kind_of

    stack = [path for path, _ in (node.meta.get("nn_module_stack") or {}).values()]
    if not stack:
        return None
    inner = stack[-1]
    if node.target == torch.ops.aten.bmm.default:
        return f"{inner}.matmul" if inner.endswith(".attn") else None
    return inner if kind_of(inner) else None


INT8_OPS = (torch.ops.aten.linear.default, torch.ops.aten.conv2d.default, torch.ops.aten.bmm.default)


def layer_filter(int8: Callable[[str], bool]):
    """The XNNPACK quantizer's node filter: the conv / linear / bmm nodes of the layers ``int8`` says yes to
    (a ``mobilevit.layers`` layer name); every other op (add, mul, the norms' linears) stays float inside the
    same XNNPACK delegate. (Weights and biases, which are not call_function nodes, pass: the quantizer asks
    about them as part of each op's pattern.)"""
    def quantize(node: torch.fx.Node) -> bool:
        if node.op != "call_function":
            return True
        if node.target not in INT8_OPS:
            return False
        layer = node_layer(node)
        return layer is not None and int8(layer)
    return quantize


def recipe_layers(float_kinds: tuple[str, ...]) -> Callable[[str], bool]:
    """The layers a recipe quantizes: every layer whose kind is not in ``float_kinds``."""
    from mobilevit.layers import kind_of

    return lambda layer: kind_of(layer) not in float_kinds


def int8_filter(float_kinds: tuple[str, ...]):
    """:func:`layer_filter` for a recipe (:func:`recipe_layers`)."""
    return layer_filter(recipe_layers(float_kinds))


def quantize_int8(graph: torch.fx.GraphModule, example: torch.Tensor, calibration: np.ndarray,
                  int8: Callable[[str], bool]):
    """The int8 program to lower: :func:`pt2e_int8` exported again."""
    return _export(pt2e_int8(graph, calibration, int8), example)


def pt2e_int8(graph: torch.fx.GraphModule, calibration: np.ndarray,
              int8: Callable[[str], bool]) -> torch.fx.GraphModule:
    """PT2E int8 of ``graph`` (``torch.export``'s module; consumed): XNNPACK quantizer (symmetric,
    per-channel weights) on the layers ``int8`` names (:func:`layer_filter`), observers fed real photos one
    at a time (the program takes batch 1). The result runs in torch with its quantize / dequantize ops (the
    int8 search's simulation of the lowered program)."""
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import get_symmetric_quantization_config
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    quantizer = ptq_quantizer()().set_global(get_symmetric_quantization_config(is_per_channel=True))
    quantizer.set_filter_function(layer_filter(int8))
    prepared = prepare_pt2e(graph, quantizer)
    for image in calibration:
        prepared(torch.from_numpy(np.ascontiguousarray(image[None], dtype=np.float32)))
    return convert_pt2e(prepared)


@functools.cache
def ptq_quantizer() -> type:
    """XNNPACK's quantizer without its QAT-only patterns (conv + training-mode batch_norm [+ relu], 4 of 16).
    ``prepare_pt2e`` folds every BatchNorm into its conv before it annotates, so in post-training quantization
    they cannot match; yet the stock quantizer runs them on a static config too, and each run exports their 12
    pattern graphs again: a ``prepare_pt2e`` of xx_small took 1.6-1.8 s with them, 0.3-0.4 s without (Intel
    Xeon, 128x128). The same annotations, the same program (tests/test_export_executorch.py)."""
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import XNNPACKQuantizer

    class PTQQuantizer(XNNPACKQuantizer):
        SUPPORTED_PATTERNS = [p for p in XNNPACKQuantizer.SUPPORTED_PATTERNS if not p.is_qat]

    return PTQQuantizer


def _partitioner(precision: str, options: ExecuTorchOptions):
    if precision == "coreml-fp16":
        import coremltools as ct
        from executorch.backends.apple.coreml.compiler import CoreMLBackend
        from executorch.backends.apple.coreml.partition import CoreMLPartitioner

        specs = CoreMLBackend.generate_compile_specs(
            compute_precision=ct.precision.FLOAT16,
            minimum_deployment_target=getattr(ct.target, options.coreml_deployment_target))
        return CoreMLPartitioner(compile_specs=specs)
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner

    return XnnpackPartitioner()


def lower(program, precision: str, path: Path, options: ExecuTorchOptions) -> Path:
    """An exported (or quantized) program lowered for ``precision``'s backend, written to ``path``."""
    from executorch.exir import to_edge_transform_and_lower

    with quiet(stderr=True):
        edge = to_edge_transform_and_lower(program, partitioner=[_partitioner(precision, options)])
        buffer = edge.to_executorch().buffer
    path.write_bytes(buffer)
    return path


def to_pte(model: torch.nn.Module, precision: str, path: Path, *, size: int, calibration: np.ndarray | None,
           options: ExecuTorchOptions) -> Path:
    """Export ``model`` at batch 1 and ``size`` x ``size``, lower it for ``precision``, write ``path``."""
    example = torch.zeros(1, 3, size, size)
    with quiet(stderr=True):
        program = _export(model, example)
        if precision == "int8":
            from ...int8 import float_kinds

            kinds = float_kinds("executorch", precision, options.float_kinds)
            program = quantize_int8(program.module(), example, calibration, recipe_layers(kinds))
    return lower(program, precision, path, options)
