"""ExecuTorch export: ``torch.export`` -> edge dialect -> a delegated ``.pte`` program.

``convert`` is this target's entry in the registry (``export.config``); call it through
``export.convert``. Precisions:

* ``fp32``: the whole graph lowered to the XNNPACK backend (CPU, Android and iOS);
* ``int8``: PT2E post-training quantization with the XNNPACK quantizer (symmetric int8,
  per-channel weights, calibrated on real photos) of the layers its recipe quantizes (:func:`int8_filter`), then lowered
  to XNNPACK;
* ``coreml-fp16``: the whole graph lowered to the Core ML backend (an ML program, fp16, iOS 17).
  The ``.pte`` is produced anywhere; it runs only where ExecuTorch has its Core ML backend (Apple
  devices). Off Apple, :func:`runner` extracts the Core ML program the ``.pte`` carries and runs it
  in the Core ML reference executor (``export.targets.coreml.reference``), so it is validated on Linux too.

The registry entry's model rewrites (``mobilevit.rewrites``) and ``bmm`` attention put every op in a
form XNNPACK delegates, so the program is one delegate call and no op runs on ExecuTorch's portable
kernels; :func:`inspect_pte` reads that back from the ``.pte`` itself, for the manifest and tests.
"""
from __future__ import annotations

import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ...graph import GraphReport, _report
from ...int8 import Int8Options
from ...quiet import quiet
from ...runners import Runner
from ..coreml.reference import CoreMLReferenceRunner

# ops whose only job is computing shapes at run time
SHAPE_OPS = {"aten::sym_size.int", "executorch_prim::floordiv.int", "aten::_local_scalar_dense.out"}

COREML_BACKEND = "CoreMLBackend"
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


def int8_filter(float_kinds: tuple[str, ...]):
    """The XNNPACK quantizer's node filter for a recipe: conv / linear / bmm nodes of layers whose kind
    is not in ``float_kinds``; every other op (add, mul, the norms' linears) stays float inside the
    same XNNPACK delegate. (Weights and biases, which are not call_function nodes, pass: the
    quantizer asks about them as part of each op's pattern.)"""
    from mobilevit.layers import kind_of

    def quantize(node: torch.fx.Node) -> bool:
        if node.op != "call_function":
            return True
        if node.target not in INT8_OPS:
            return False
        layer = node_layer(node)
        if layer is None:
            return False
        return kind_of(layer) not in float_kinds
    return quantize


def quantize_int8(model: torch.nn.Module, example: torch.Tensor, calibration: np.ndarray,
                  float_kinds: tuple[str, ...]):
    """PT2E int8: XNNPACK quantizer (symmetric, per-channel weights) on the layers not kept in float
    (:func:`int8_filter`), observers fed real photos one at a time (the program takes batch 1)."""
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
    quantizer.set_filter_function(int8_filter(float_kinds))
    prepared = prepare_pt2e(_export(model, example).module(), quantizer)
    for image in calibration:
        prepared(torch.from_numpy(np.ascontiguousarray(image[None], dtype=np.float32)))
    return _export(convert_pt2e(prepared), example)


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


def to_pte(model: torch.nn.Module, precision: str, path: Path, *, size: int, calibration: np.ndarray | None,
           options: ExecuTorchOptions) -> Path:
    """Export ``model`` at batch 1 and ``size`` x ``size``, lower it for ``precision``, write ``path``."""
    from executorch.exir import to_edge_transform_and_lower

    example = torch.zeros(1, 3, size, size)
    with quiet(stderr=True):
        if precision == "int8":
            from ...int8 import float_kinds

            program = quantize_int8(model, example, calibration, float_kinds("executorch", precision,
                                                                             options.float_kinds))
        else:
            program = _export(model, example)
        edge = to_edge_transform_and_lower(program, partitioner=[_partitioner(precision, options)])
        buffer = edge.to_executorch().buffer
    path.write_bytes(buffer)
    return path


def convert(model: torch.nn.Module, precisions, workdir: Path, *, sizes: tuple[int, ...],
            calibration: np.ndarray | None, options: ExecuTorchOptions) -> dict[str, Path]:
    """This target's converter (see ``export.config.TargetConfig.converter``)."""
    return {p: to_pte(model, p, workdir / f"model_{p}.pte", size=sizes[0], calibration=calibration, options=options)
            for p in precisions}


# ------------------------------------------------------------------------------------------------
# reading a .pte back
# ------------------------------------------------------------------------------------------------
def _program(path: str | Path):
    from executorch.exir._serialize._program import deserialize_pte_binary

    from ...errors import ExportConfigError

    data = Path(path).read_bytes()
    try:
        return deserialize_pte_binary(data)
    except Exception as e:
        raise ExportConfigError(f"{path} is not an ExecuTorch program ({type(e).__name__}: {e}); "
                                "export one with `python -m export executorch`") from e


def delegation(path: str | Path) -> dict:
    """How the program runs: delegate calls per backend and every op left on ExecuTorch's own kernels."""
    return _delegation(_program(path).program.execution_plan[0])


def _delegation(plan) -> dict:
    calls: Counter = Counter()
    kernels: Counter = Counter()
    for chain in plan.chains:
        for instr in chain.instructions:
            args = instr.instr_args
            kind = type(args).__name__
            if kind == "DelegateCall":
                calls[plan.delegates[args.delegate_index].id] += 1
            elif kind == "KernelCall":
                op = plan.operators[args.op_index]
                kernels[f"{op.name}.{op.overload}" if op.overload else op.name] += 1
    return {"segments": sum(calls.values()), "backends": dict(calls),
            "non_delegated_ops": dict(kernels.most_common())}


_DTYPES = {6: "float32", 5: "float16", 1: "int8", 0: "uint8", 3: "int32", 4: "int64"}


def inspect_pte(path: str | Path) -> GraphReport:
    """A ``GraphReport`` of the ``.pte``: its ops are delegate calls and non-delegated kernels.

    The ranks and transposes inside a delegate are the backend's own; ``max_rank`` covers only the
    tensors ExecuTorch itself holds (inputs, outputs, and those between non-delegated ops).
    """
    plan = _program(path).program.execution_plan[0]
    deleg = _delegation(plan)
    ops = Counter({f"delegate:{k}": v for k, v in deleg["backends"].items()})
    ops.update(deleg["non_delegated_ops"])
    tensors = [v.val for v in plan.values if type(v.val).__name__ == "Tensor"]

    def io(i):
        t = plan.values[i].val
        dtype = _DTYPES.get(int(t.scalar_type), str(t.scalar_type))
        return {"name": f"value_{i}", "shape": list(t.sizes), "dtype": dtype,
                "layout": "NCHW" if len(t.sizes) == 4 and t.sizes[1] == 3 else "-"}

    report = _report("executorch", ops, max((len(t.sizes) for t in tensors), default=0), "aten::permute_copy.out",
                     map(io, plan.inputs), map(io, plan.outputs), shape_ops=SHAPE_OPS)
    report.delegation = deleg
    return report


def extract_coreml(path: str | Path, out_dir: str | Path) -> list[Path]:
    """The ``.mlpackage`` of every Core ML delegate in the ``.pte``, unpacked under ``out_dir``."""
    from executorch.backends.apple.coreml import executorchcoreml
    from executorch.exir.schema import DataLocation

    pte = _program(path)
    program = pte.program
    named = {}
    if pte.named_data is not None:
        named = {k: pte.named_data.buffers[e.buffer_index] for k, e in pte.named_data.pte_data.items()}
    packages = []
    for i, delegate in enumerate(d for plan in program.execution_plan for d in plan.delegates):
        if delegate.id != COREML_BACKEND:
            continue
        if delegate.processed.location != DataLocation.INLINE:
            raise ValueError(f"{path}: Core ML delegate {i} keeps its data outside the program")
        data = program.backend_delegate_data[delegate.processed.index].data
        if data.startswith(b"CMJR"):  # a JSON reference into the named data (multifunction programs)
            import json

            data = named[json.loads(data[4:].decode())["key"]]
        folder = Path(out_dir) / f"delegate_{i}"
        folder.mkdir(parents=True)
        if not executorchcoreml.unflatten_directory_contents(data, str(folder)):
            raise ValueError(f"{path}: Core ML delegate {i} could not be unpacked")
        packages += sorted(folder.rglob("*.mlpackage"))
    return packages


# ------------------------------------------------------------------------------------------------
# runners
# ------------------------------------------------------------------------------------------------
# ExecuTorch's thread pool is one per process, and resizing it breaks every method loaded before
# (measured with 1.5.1: such a method hangs or fails with error 0x1). So runners share this record of
# the pool: a runner that needs another size resizes it and bumps the generation, and a runner whose
# method predates the current generation loads it again, in ``prepare`` (untimed).
_POOL = {"threads": None, "generation": 0}


class ExecuTorchRunner(Runner):
    """The ``.pte`` in ExecuTorch's Python runtime (the same C++ runtime and XNNPACK kernels an app links)."""

    runtime = "executorch"

    def __init__(self, path, threads: int = 2):
        super().__init__(path, threads)
        self._generation = -1
        self._ensure_pool()
        sizes = list(self.method.metadata.input_tensor_meta(0).sizes())
        self.fixed_batch = sizes[0] == 1

    def _ensure_pool(self) -> None:
        """Size the process-wide pool to this runner's threads; reload the method if it was resized."""
        from executorch.extension.pybindings import portable_lib
        from executorch.runtime import Runtime

        if _POOL["threads"] != self.threads:
            with quiet(stderr=True):
                portable_lib._unsafe_reset_threadpool(self.threads)
            _POOL["threads"] = self.threads
            _POOL["generation"] += 1
        if self._generation != _POOL["generation"]:
            with quiet(stderr=True):
                self.program = Runtime.get().load_program(str(self.path))
                self.method = self.program.load_method("forward")
            self._generation = _POOL["generation"]

    @property
    def version(self) -> str:
        from executorch.version import __version__

        return __version__

    @property
    def settings(self) -> dict:
        return {"threads": self.threads, "backend": "XNNPACK delegate",
                "threadpool": "process-wide, resized per runner"}

    def prepare(self, x: np.ndarray):
        self._ensure_pool()
        return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))

    def run(self, feed) -> np.ndarray:
        return self.method.execute([feed])[0].numpy().astype(np.float32)


class ExtractedCoreMLRunner(CoreMLReferenceRunner):
    """A Core ML-delegated ``.pte`` where ExecuTorch has no Core ML backend: the program it carries,
    extracted, in the Core ML reference executor. Numerics only (``timeable`` is False)."""

    runtime = "coreml-reference (.pte)"

    def __init__(self, path, threads: int = 2):
        self._tmp = tempfile.TemporaryDirectory(prefix="pte-coreml-")  # lives as long as the runner
        packages = extract_coreml(path, self._tmp.name)
        if len(packages) != 1:
            raise ValueError(f"{path}: expected one Core ML program, found {len(packages)}")
        super().__init__(packages[0], threads)
        self.path = Path(path)

    @property
    def version(self) -> str:
        return f"{super().version}, on the Core ML program extracted from the .pte"


def runner(path: str | Path, threads: int = 2):
    """ExecuTorch's runtime for the ``.pte``; a Core ML-delegated one off Apple goes to the reference executor."""
    backends = delegation(path)["backends"]
    if COREML_BACKEND in backends:
        from executorch.runtime import Runtime

        if not Runtime.get().backend_registry.is_available(COREML_BACKEND):
            return ExtractedCoreMLRunner(path, threads)
    return ExecuTorchRunner(path, threads)
