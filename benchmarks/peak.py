"""Measured machine peaks at a given thread count: large fp32 GEMM throughput (PyTorch) and int8 integer GEMM
throughput (onnxruntime ``MatMulInteger``), so achieved model throughput can be read as a fraction of what the
machine can actually do for each precision.
"""
from __future__ import annotations

import time

import numpy as np
import torch

from mobilevit.threads import torch_threads

INT8_OPSET = 13  # MatMulInteger exists since opset 10; keep within what every installed runtime supports (<= 18)


def gemm_peak_gflops(threads: int, n: int = 2048, repeats: int = 5) -> float:
    """Best-of-``repeats`` GFLOP/s of an ``n x n`` fp32 matmul in PyTorch (MKL/oneDNN) at ``threads`` threads.

    PyTorch's thread count is restored afterwards.
    """
    with torch_threads(threads):
        a, b = torch.randn(n, n), torch.randn(n, n)
        return _best_gops(lambda: torch.matmul(a, b), n, repeats)


def ort_fp32_peak_gflops(threads: int, n: int = 2048, repeats: int = 5) -> float:
    """Best-of-``repeats`` GFLOP/s of an ``n x n`` fp32 ``MatMul`` in onnxruntime (MLAS) at ``threads`` threads.

    On some CPUs onnxruntime's GEMM beats PyTorch's (MKL on AMD): a peak taken from PyTorch alone then sits
    below what onnxruntime rows reach, and their "fraction of peak" goes over 100%.
    """
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    b = rng.standard_normal((n, n), dtype=np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["A", "B"], ["Y"])], "matmul_fp32",
        [helper.make_tensor_value_info("A", TensorProto.FLOAT, [n, n])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [n, n])],
        initializer=[numpy_helper.from_array(b, name="B")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", INT8_OPSET)])
    model.ir_version = 8
    sess, feed = _ort_session(model, threads), {"A": rng.standard_normal((n, n), dtype=np.float32)}
    return _best_gops(lambda: sess.run(None, feed), n, repeats)


def _best_gops(matmul, n: int, repeats: int) -> float:
    """2 n^3 operations over the best of ``repeats`` timed calls of ``matmul`` (after one untimed call)."""
    matmul()
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        matmul()
        best = min(best, time.perf_counter() - t)
    return 2.0 * n ** 3 / best / 1e9


def _matmul_integer_model(a_shape: tuple[int, int], b: np.ndarray):
    """In-memory one-node ONNX model ``Y = MatMulInteger(A, B)``: A uint8 ``a_shape`` graph input, B int8
    initializer, Y int32."""
    from onnx import TensorProto, helper, numpy_helper

    b = np.asarray(b, dtype=np.int8)
    if len(a_shape) != 2 or b.ndim != 2 or a_shape[1] != b.shape[0]:
        raise ValueError(f"incompatible shapes {tuple(a_shape)} x {b.shape}")
    node = helper.make_node("MatMulInteger", ["A", "B"], ["Y"])
    graph = helper.make_graph(
        [node], "matmul_integer",
        [helper.make_tensor_value_info("A", TensorProto.UINT8, list(a_shape))],
        [helper.make_tensor_value_info("Y", TensorProto.INT32, [a_shape[0], b.shape[1]])],
        initializer=[numpy_helper.from_array(b, name="B")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", INT8_OPSET)])
    model.ir_version = 8  # what opset 13 needs; keeps the model loadable by older onnxruntime builds too
    return model


def _ort_session(model, threads: int):
    """CPU onnxruntime session with ``threads`` intra-op threads and no spin-waiting (spinning threads would
    steal cycles from the next measurement)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def int8_peak_gops(threads: int, n: int = 1024, repeats: int = 5) -> float:
    """Best-of-``repeats`` GOP/s (a multiply and an add count as 2 ops) of an ``n x n`` uint8 x int8 -> int32
    ``MatMulInteger`` in onnxruntime (CPU) at ``threads`` intra-op threads."""
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, size=(n, n), dtype=np.uint8)
    b = rng.integers(-128, 128, size=(n, n), dtype=np.int8)
    sess = _ort_session(_matmul_integer_model((n, n), b), threads)
    return _best_gops(lambda: sess.run(None, {"A": a}), n, repeats)


def measure_peaks(threads_list) -> dict:
    """Both peaks for each thread count, keyed by the thread count as a string (JSON-friendly); cheap enough to
    call at the start and at the end of a benchmark run to see whether the machine changed underneath it.

    The fp32 peak is the better of PyTorch's and onnxruntime's GEMM (both kept, for the record)."""
    threads_list = [int(t) for t in threads_list]
    torch_fp32 = {str(t): gemm_peak_gflops(t) for t in threads_list}
    ort_fp32 = {str(t): ort_fp32_peak_gflops(t) for t in threads_list}
    return {"fp32_gflops": {t: max(torch_fp32[t], ort_fp32[t]) for t in torch_fp32},
            "int8_gops": {str(t): int8_peak_gops(t) for t in threads_list},
            "fp32_gflops_torch": torch_fp32, "fp32_gflops_onnxruntime": ort_fp32}
