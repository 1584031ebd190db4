"""torch's thread count for a block of work, the caller's restored after."""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch


@contextmanager
def torch_threads(n: int | None = None) -> Iterator[None]:
    """Run the block at ``n`` torch threads (``None``: the block sets its own) and give the caller back its own
    count, also on error: work that needs its own count (one thread for bit-stable sums, a benchmark's count, a
    runner's) must not leave it to the next piece of work in the process."""
    before = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
