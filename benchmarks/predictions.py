"""Top-k predictions of one artifact over a list of files, saved as they are made, so a run resumes.

Shared by the engines that fill them: ``benchmarks.accuracy`` (one process) and ``benchmarks.cluster`` (Ray).
"""
from __future__ import annotations

import json
from pathlib import Path

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
        self.first_at: float | None = None  # perf_counter when this run's first batch came back
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
