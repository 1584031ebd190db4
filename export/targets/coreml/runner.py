"""Core ML's own runtime on macOS; elsewhere the reference executor (``reference``)."""
from __future__ import annotations

import platform
from pathlib import Path

import numpy as np

from ...errors import RunnerUnavailable
from ...runners import Runner


def coreml_runtime_available() -> tuple[bool, str]:
    """(True, "") on macOS with a loadable Core ML framework, else (False, reason)."""
    if platform.system() != "Darwin":
        return False, f"Core ML prediction needs macOS (this is {platform.system()})"
    return True, ""


class CoreMLRuntimeRunner(Runner):
    """Core ML's own runtime (macOS only); image inputs get PIL images, as an app would pass."""

    runtime = "coreml"

    def __init__(self, path, threads: int = 2, compute_units: str = "ALL"):
        super().__init__(path, threads)
        ok, reason = coreml_runtime_available()
        if not ok:
            raise RunnerUnavailable(reason)
        import coremltools as ct

        self.model = ct.models.MLModel(str(self.path), compute_units=getattr(ct.ComputeUnit, compute_units))
        spec = self.model.get_spec()
        self.input = spec.description.input[0]
        self.is_image = self.input.type.HasField("imageType")
        self.bgr = self.is_image and self.input.type.imageType.colorSpace == 30  # ColorSpace.BGR
        self.output = spec.description.predictedProbabilitiesName or spec.description.output[0].name
        self.labels = None
        if spec.description.predictedProbabilitiesName:
            from .labels import classifier_labels

            self.labels = classifier_labels(spec)

    @property
    def version(self) -> str:
        import coremltools as ct

        return ct.__version__

    def prepare(self, x: np.ndarray):
        if self.is_image:
            from PIL import Image

            pixels = np.clip(np.round(x[0].transpose(1, 2, 0) * 255.0), 0, 255).astype(np.uint8)
            if self.bgr:
                pixels = pixels[..., ::-1]  # the model's BGR channels -> the RGB image an app holds
            return Image.fromarray(np.ascontiguousarray(pixels))
        return x.astype(np.float32)

    def run(self, feed) -> np.ndarray:
        out = self.model.predict({self.input.name: feed})[self.output]
        if isinstance(out, dict):
            out = np.array([out[label] for label in self.labels], dtype=np.float32)
        return np.asarray(out, np.float32).reshape(1, -1)


def runner_class() -> type:
    """Core ML itself on macOS; elsewhere the reference executor (``export.targets.coreml.reference``)."""
    if coreml_runtime_available()[0]:
        return CoreMLRuntimeRunner
    from .reference import CoreMLReferenceRunner

    return CoreMLReferenceRunner


def coreml_runner(path: str | Path, threads: int = 2, **kwargs) -> Runner:
    """The registry's runner: :func:`runner_class` on ``path``."""
    return runner_class()(path, threads=threads, **kwargs)
