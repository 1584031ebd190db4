"""The package's errors: one ``ExportError`` base, one subclass per stage.

A caller that wants "anything the exporter refused or could not do" catches ``ExportError``;
the CLI maps each subclass to its exit code (``export.__main__``, ``EXIT_*``).
"""
from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Iterator


class ExportError(Exception):
    """Base of every error the exporter raises on purpose."""


class ExportConfigError(ExportError, ValueError):
    """A request the exporter cannot honour (unknown target/precision/option, bad size): nothing was done."""


class OutputError(ExportError):
    """The destination cannot be written (exists, unwritable, not a folder): nothing was done."""


# A write the disk refused -> what it says of the folder. Full, over quota or over a file-size limit anywhere
# the export writes; read-only or forbidden only at the output itself (elsewhere it is not --out to change).
_DISK = {errno.ENOSPC: "is full", errno.EDQUOT: "is over its disk quota",
         errno.EFBIG: "cannot take a file that large, over the disk's or the process's file-size limit"}
_OUTPUT_ONLY = (errno.EROFS, errno.EACCES)
_ERRNO_TEXT = re.compile(r"\[Errno (\d+)\]")


def _refusals(exc: BaseException) -> Iterator[tuple[int, str]]:
    """``(errno, path)`` of every ``OSError`` in ``exc``'s chain (causes and contexts), including those
    ``shutil.move``/``copytree`` collect as text in a ``shutil.Error`` (coremltools saves that way)."""
    seen: set[int] = set()
    todo = [exc]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, shutil.Error) and e.args and isinstance(e.args[0], list):
            for row in e.args[0]:  # (src, dst, str(why)) per file that failed
                found = _ERRNO_TEXT.search(str(row[-1])) if isinstance(row, tuple) and len(row) == 3 else None
                if found:
                    yield int(found.group(1)), str(row[1])
        elif isinstance(e, OSError) and e.errno is not None:
            yield e.errno, str(e.filename or "")
        todo += [e.__cause__, e.__context__]


def _mount(path: str) -> Path:
    """The mount point of the file system holding ``path`` (which may be gone: its nearest existing folder)."""
    where = Path(os.path.abspath(path))
    while not where.exists():
        where = where.parent
    while not os.path.ismount(where):
        where = where.parent
    return where


def output_error(exc: BaseException, out: str | Path) -> OutputError | None:
    """The :class:`OutputError` to raise for ``exc`` if a disk refused a write (full, over quota, too large;
    read-only or forbidden at ``out``), naming the folder and the fix; else ``None``."""
    if isinstance(exc, OutputError):
        return None
    out = Path(os.path.abspath(out))
    for code, path in _refusals(exc):
        inside = not path or Path(os.path.abspath(path)).is_relative_to(out)
        why = f"{errno.errorcode[code]}, {os.strerror(code)}"
        if code in _DISK and inside:
            return OutputError(f"the output folder {out} {_DISK[code]} ({why}); nothing was left in it: free space "
                               "on its disk, or choose another --out")
        if code in _DISK:
            temporary = Path(os.path.abspath(path)).is_relative_to(os.path.abspath(tempfile.gettempdir()))
            return OutputError(f"the disk mounted at {_mount(path)} {_DISK[code]} ({why}, writing {path}): free "
                               "space on it" + (", or set TMPDIR to a folder on another disk" if temporary else ""))
        if code in _OUTPUT_ONLY and path and inside:
            return OutputError(f"the output folder {out} cannot be written ({why}: {path}): make it writable, or "
                               "choose another --out")
    return None


@contextlib.contextmanager
def writing_to(out: str | Path) -> Iterator[None]:
    """Raise a disk's refusal to write inside the block as :func:`output_error`'s ``OutputError``."""
    try:
        yield
    except Exception as e:
        refused = output_error(e, out)
        if refused is None:
            raise
        raise refused from e


class ConversionError(ExportError):
    """A converter (coremltools, torch.onnx, onnxruntime quantization, onnx2tf) failed."""


class RunnerUnavailable(ExportError):
    """The runtime cannot run here (e.g. Core ML prediction off macOS); the message says why."""


class ValidationError(ExportError):
    """An artifact does not compute what PyTorch computes; lists every failing check.

    ``published`` names what an export of several precisions did publish before or after this
    failure (each precision is validated and published on its own).
    """

    def __init__(self, artifact: str, problems: list[str], published: tuple[str, ...] = ()):
        self.artifact = artifact
        self.problems = problems
        self.published = tuple(published)
        super().__init__(f"{artifact} failed validation:\n  - " + "\n  - ".join(problems))
