"""The MobileViT paper's multi-scale sampler (Mehta & Rastegari 2022, sec. 4).

Each batch gets one resolution from a set, and its batch size is scaled so that pixels per batch
stay about constant: ``batch(s) = max(1, round(base_batch * (base_size / s) ** 2))``. Small
resolutions get big batches (fast, many updates), large ones small batches. Every sample is seen
exactly once per epoch; the order and the resolutions depend only on ``(seed, epoch)``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np


@dataclass
class MultiScaleSampler:
    """Yields ``(size, indices)`` batches over ``num_samples`` items."""

    num_samples: int
    sizes: tuple[int, ...]
    base_size: int
    base_batch: int
    seed: int = 0
    shuffle: bool = True
    epoch: int = 0

    def __post_init__(self):
        if self.num_samples <= 0:
            raise ValueError("the sampler needs at least one sample")
        if not self.sizes or any(s <= 0 for s in self.sizes):
            raise ValueError(f"sizes must be positive, got {self.sizes}")
        if self.base_batch <= 0 or self.base_size <= 0:
            raise ValueError("base_batch and base_size must be positive")

    def batch_size(self, size: int) -> int:
        """Batch size for a resolution: constant pixels per batch."""
        return max(1, int(round(self.base_batch * (self.base_size / size) ** 2)))

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[tuple[int, list[int]]]:
        rng = np.random.default_rng([self.seed, self.epoch])
        order = rng.permutation(self.num_samples) if self.shuffle else np.arange(self.num_samples)
        start = 0
        while start < self.num_samples:
            size = int(rng.choice(self.sizes)) if self.shuffle else self.base_size
            n = self.batch_size(size)
            yield size, order[start:start + n].tolist()
            start += n

    def __len__(self) -> int:
        """Number of batches this epoch (depends on the drawn sizes)."""
        return sum(1 for _ in iter(self))
