"""Exporters to Core ML, ONNX and TFLite, runners for each runtime, validation and publishing.

The public API: :func:`convert` / :func:`convert_all` (the one conversion entry point),
:func:`with_target_defaults`, :func:`make_runner`, and ``TARGETS`` (the target registry).
Stages live one per module: ``request`` -> ``convert`` -> ``validate`` -> ``publish``, driven by
``pipeline.run_export`` (the CLI, ``python -m export``).
"""
from .config import TARGETS, precisions, target_config
from .convert import convert, convert_all, with_target_defaults
from .errors import ConversionError, ExportConfigError, ExportError, OutputError, ValidationError
from .runners import make_runner

__all__ = ["TARGETS", "precisions", "target_config", "convert", "convert_all", "with_target_defaults",
           "make_runner", "ExportError", "ExportConfigError", "ConversionError", "OutputError", "ValidationError"]
