"""Top-k predictions of one artifact over a list of files, saved as they are made, so a run resumes; the
passes that fill them, and how a pass's model is loaded.

Shared by the engines that run the passes: ``benchmarks.accuracy`` (one process) and ``benchmarks.cluster`` (Ray).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from mobilevit.atomic import write_atomic

TOP_K = 5
SAVE_EVERY = 8  # batches between two saves of an artifact's partial predictions


def top_k(logits: np.ndarray, k: int = TOP_K) -> np.ndarray:
    """``[B, k]`` class indices, best first."""
    k = min(k, logits.shape[1])
    part = np.argpartition(-logits, k - 1, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(logits, part, axis=1), axis=1, kind="stable")
    return np.take_along_axis(part, order, axis=1).astype(np.int32)


class Predictions:
    """One artifact's top-k predictions ``[N, k]`` (-1: not yet, or unreadable), saved as it goes."""

    def __init__(self, folder: Path | None, artifact, n: int):
        """``artifact``: anything with a ``name`` (``benchmarks.accuracy.Artifact``), the file stem."""
        self.path = folder / f"{artifact.name}.npy" if folder else None
        self.top = np.full((n, TOP_K), -1, np.int32)
        self.done = 0  # files [0, done) are predicted (or unreadable)
        if self.path and self.path.exists():
            try:  # a save cut between its two files: start this artifact over
                saved = np.load(self.path)
                done = int(json.loads(self.path.with_suffix(".json").read_text())["done"])
            except (OSError, ValueError, KeyError):
                return
            if saved.shape == self.top.shape:
                self.top, self.done = saved, done

    @property
    def complete(self) -> bool:
        return self.done >= len(self.top)

    def save(self) -> None:
        if not self.path:
            return
        write_atomic(self.path, lambda f: np.save(f, self.top))
        write_atomic(self.path.with_suffix(".json"), lambda f: f.write(json.dumps({"done": self.done}).encode()))


@dataclass
class Pass:
    """One model over the images: PyTorch's (``source`` the module; the reference, whose pass also finds the
    unreadable files and whose errors end the run) or an artifact's (``source`` its path; an error is its row's).
    The engine fills ``preds`` from ``preds.done`` on, and sets ``runtime`` or ``error``, and ``timing``:
    this run's wall seconds of the pass, the files it covered, and the seconds to its first batch (loading
    the runtime, starting workers: the fixed cost)."""
    label: str  # "onnx fp32"
    source: object
    preds: Predictions
    reference: bool = False
    runtime: str = ""
    error: str = ""
    timing: dict = field(default_factory=dict)

    @property
    def is_artifact(self) -> bool:
        return isinstance(self.source, (str, Path))

    @property
    def name(self) -> str:
        """The file name of the shipped artifact ("pytorch" for the module)."""
        return Path(self.source).name if self.is_artifact else "pytorch"


def load_fn(source, threads: int) -> tuple[Callable[[np.ndarray], np.ndarray], str]:
    """``(images -> logits, "runtime version")`` for a PyTorch module or an artifact path, at ``threads``."""
    import torch

    if isinstance(source, (str, Path)):
        from export.runners import make_runner

        runner = make_runner(Path(source), threads=threads)
        return runner, f"{runner.runtime} {runner.version}"

    def fn(x: np.ndarray) -> np.ndarray:
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)
        with torch.no_grad():
            return source(torch.from_numpy(x)).numpy()
    return fn, f"torch {torch.__version__}"


def timing(seconds: float, files: int, first_batch_s: float | None) -> dict:
    """A pass's ``timing`` record (see :class:`Pass`)."""
    return {"seconds": round(seconds, 3), "files": files,
            "first_batch_s": round(seconds if first_batch_s is None else first_batch_s, 3)}
