"""Runners: execute an exported artifact on a preprocessed batch, one class per runtime.

Every runner takes the same input as the PyTorch model, a float32 ``[B, 3, H, W]`` array in the
model's channel order and scale (see :mod:`mobilevit.preprocess`), and returns float32 logits
``[B, num_classes]``. Layout changes (NHWC for TFLite), image inputs (Core ML ``ImageType``) and
int8 quantization of inputs are the runner's job, so benchmarks and validation compare like with
like.

A call is split in two so that benchmarks time only the runtime: ``prepare(x)`` converts the
input (dtype, layout) and ``run(feed)`` invokes the runtime. ``settings`` records the runtime
options that change speed (threads, spinning), for the benchmark JSON.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .config import load, target_for_path
from .errors import RunnerUnavailable

__all__ = ["Runner", "RunnerUnavailable", "make_runner"]


class Runner:
    """Base class: ``runtime``, ``version``, ``settings``, ``prepare``/``run``, ``__call__(x) -> logits``."""

    runtime = "base"
    fixed_batch = True  # the artifact takes one image at a time
    timeable = True  # its latency means something (False for a reference executor)

    def __init__(self, path: str | Path, threads: int = 2):
        self.path = Path(path)
        self.threads = threads

    @property
    def version(self) -> str:  # pragma: no cover - overridden
        return "unknown"

    @property
    def settings(self) -> dict:
        return {"threads": self.threads}

    def prepare(self, x: np.ndarray):
        """The runtime's input for the batch ``x`` (conversions that are not the model's work)."""
        return x

    def run(self, feed) -> np.ndarray:  # pragma: no cover - overridden
        """Invoke the runtime on a prepared feed; float32 logits."""
        raise NotImplementedError

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """Logits for a batch; one image at a time if the artifact has a fixed batch of 1."""
        if self.fixed_batch and x.shape[0] > 1:
            return np.concatenate([self.run(self.prepare(x[i:i + 1])) for i in range(x.shape[0])])
        return self.run(self.prepare(x))


DEFAULT_THREADS = 2  # a runner's threads when the caller gives none (validation); MOBILEVIT_THREADS sets another
THREADS_ENV = "MOBILEVIT_THREADS"


def default_threads() -> int:
    """The threads a runner uses when none is given: ``$MOBILEVIT_THREADS`` (a positive integer) or 2. Set it to
    each process's share of the cores when several run side by side (the test workers do): two processes of 2
    threads each on 2 cores ran the Core ML reference executor 4.6x slower than two of 1 thread each (8 photos,
    xx_small w8a8: 6.1 s against 1.3 s; one process alone, 1.1 s at 2 threads, 1.3 s at 1)."""
    value = os.environ.get(THREADS_ENV, "")
    if not value:
        return DEFAULT_THREADS
    if not value.isdigit() or int(value) < 1:
        from .errors import ExportConfigError

        raise ExportConfigError(f"{THREADS_ENV}={value!r}: give a positive whole number of threads, or unset it")
    return int(value)


def make_runner(path: str | Path, threads: int | None = None, **kwargs) -> Runner:
    """The runner of the target whose artifacts end like ``path`` (``export.config.TARGETS``), at ``threads``
    (:func:`default_threads` if None)."""
    return load(target_for_path(path).runner)(path, default_threads() if threads is None else threads, **kwargs)
