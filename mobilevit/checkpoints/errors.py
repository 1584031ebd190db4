"""What can go wrong with a checkpoint: one typed error each, all :class:`CheckpointError` (a ``ValueError``).

Every message names the problem and the fix; long key lists are capped by :func:`cap`.
"""
from __future__ import annotations

MAX_LISTED = 8  # keys named in an error message before "... (+N more)"


class CheckpointError(ValueError):
    """Base class: a checkpoint that cannot be read, recognised or loaded (or saved)."""


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """The path does not exist."""


class NotACheckpointError(CheckpointError):
    """The file is something else (an image, text, a pickle without tensors...)."""


class TruncatedCheckpointError(CheckpointError):
    """The file starts like a checkpoint but cannot be read to the end."""


class UnsafeCheckpointError(CheckpointError):
    """Reading the file would run code from its pickle (``weights_only`` refused it)."""


class UnknownFormatError(CheckpointError):
    """Tensors whose names match none of the supported formats."""


class KeyMismatchError(CheckpointError):
    """A recognised format with missing or unexpected keys."""

    def __init__(self, message: str, missing: list[str] = (), unexpected: list[str] = ()):
        super().__init__(message)
        self.missing, self.unexpected = list(missing), list(unexpected)


class ShapeMismatchError(CheckpointError):
    """All keys present, but some tensor shapes fit no variant."""


class VariantMismatchError(CheckpointError):
    """The checkpoint holds another variant than the one asked for."""


class TaskMismatchError(CheckpointError):
    """A checkpoint for another task: e.g. classification weights given where a segmentation model is loaded."""


class CorruptWeightsError(CheckpointError):
    """Tensors holding NaN/Inf or absurd magnitudes: a diverged run or a damaged file."""


class CheckpointWriteError(CheckpointError, OSError):
    """Saving failed; nothing was left at the destination."""


def cap(keys: list[str]) -> str:
    """``keys`` joined with commas, the first :data:`MAX_LISTED` of them."""
    more = len(keys) - MAX_LISTED
    return ", ".join(keys[:MAX_LISTED]) + (f" ... (+{more} more)" if more > 0 else "")
