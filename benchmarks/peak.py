"""A measured machine peak: large fp32 GEMM throughput with the same thread count."""
from __future__ import annotations

import time

import torch


def gemm_peak_gflops(threads: int, n: int = 2048, repeats: int = 5) -> float:
    """Best-of-``repeats`` GFLOP/s of an ``n x n`` fp32 matmul in PyTorch (MKL/oneDNN)."""
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        a, b = torch.randn(n, n), torch.randn(n, n)
        torch.matmul(a, b)
        best = float("inf")
        for _ in range(repeats):
            t = time.perf_counter()
            torch.matmul(a, b)
            best = min(best, time.perf_counter() - t)
        return 2.0 * n ** 3 / best / 1e9
    finally:
        torch.set_num_threads(old)
