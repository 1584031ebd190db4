"""The package's errors: one ``ExportError`` base, one subclass per stage.

A caller that wants "anything the exporter refused or could not do" catches ``ExportError``;
the CLI maps each subclass to its exit code (``export.__main__``, ``EXIT_*``).
"""
from __future__ import annotations


class ExportError(Exception):
    """Base of every error the exporter raises on purpose."""


class ExportConfigError(ExportError, ValueError):
    """A request the exporter cannot honour (unknown target/precision/option, bad size): nothing was done."""


class OutputError(ExportError):
    """The destination cannot be written (exists, unwritable, not a folder): nothing was done."""


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
