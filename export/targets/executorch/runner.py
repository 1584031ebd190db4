"""Reading ExecuTorch programs back (what a ``.pte`` delegates, its Core ML payload) and running them: the
registry's runner and inspector."""
from __future__ import annotations

import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from ...graph import GraphReport, _report
from ...quiet import quiet
from ...runners import Runner
from ..coreml.reference import CoreMLReferenceRunner

# ops whose only job is computing shapes at run time
SHAPE_OPS = {"aten::sym_size.int", "executorch_prim::floordiv.int", "aten::_local_scalar_dense.out"}
COREML_BACKEND = "CoreMLBackend"


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
