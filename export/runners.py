"""Runners: execute an exported artifact on a preprocessed batch, one class per runtime.

Every runner takes the same input as the PyTorch model, a float32 ``[B, 3, H, W]`` array in the
model's channel order and scale (see :mod:`mobilevit.preprocess`), and returns float32 logits
``[B, num_classes]``. Layout changes (NHWC for TFLite), image inputs (Core ML ``ImageType``) and
int8 quantization of inputs are the runner's job, so benchmarks and validation compare like with
like.
"""
from __future__ import annotations

import platform
from pathlib import Path

import numpy as np


class RunnerUnavailable(RuntimeError):
    """The runtime cannot run here (e.g. Core ML prediction off macOS); the message says why."""


class Runner:
    """Base class: ``name``, ``version``, ``precision``, ``__call__(x) -> logits``."""

    runtime = "base"

    def __init__(self, path: str | Path, threads: int = 2):
        self.path = Path(path)
        self.threads = threads

    @property
    def version(self) -> str:  # pragma: no cover - overridden
        return "unknown"

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """Logits for a batch; runs one image at a time if the artifact has a fixed batch of 1."""
        raise NotImplementedError


class OnnxRuntimeRunner(Runner):
    runtime = "onnxruntime"

    def __init__(self, path, threads: int = 2):
        super().__init__(path, threads)
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(str(self.path), opts, providers=["CPUExecutionProvider"])
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        self.input_dtype = np.float16 if "float16" in inp.type else np.float32
        self.fixed_batch = isinstance(inp.shape[0], int) and inp.shape[0] == 1

    @property
    def version(self) -> str:
        import onnxruntime as ort

        return ort.__version__

    def __call__(self, x: np.ndarray) -> np.ndarray:
        if self.fixed_batch and x.shape[0] > 1:
            return np.concatenate([self(x[i:i + 1]) for i in range(x.shape[0])])
        out = self.session.run(None, {self.input_name: x.astype(self.input_dtype)})[0]
        return out.astype(np.float32)


class LiteRTRunner(Runner):
    """TFLite through ai-edge-litert (XNNPACK); NHWC input unless the model says NCHW."""

    runtime = "litert"

    def __init__(self, path, threads: int = 2):
        super().__init__(path, threads)
        from ai_edge_litert.interpreter import Interpreter

        self.interpreter = Interpreter(model_path=str(self.path), num_threads=threads)
        self.interpreter.allocate_tensors()
        self.inp = self.interpreter.get_input_details()[0]
        self.out = self.interpreter.get_output_details()[0]
        shape = list(self.inp["shape"])
        self.nhwc = shape[-1] == 3 and shape[1] != 3
        self.fixed_batch = shape[0] == 1

    @property
    def version(self) -> str:
        import ai_edge_litert

        return getattr(ai_edge_litert, "__version__", "2.1.0")

    def _one(self, x: np.ndarray) -> np.ndarray:
        if self.nhwc:
            x = x.transpose(0, 2, 3, 1)  # [B, 3, H, W] -> [B, H, W, 3]
        dtype = self.inp["dtype"]
        if dtype in (np.int8, np.uint8):
            scale, zero = self.inp["quantization"]
            x = np.clip(np.round(x / scale + zero), np.iinfo(dtype).min, np.iinfo(dtype).max)
        self.interpreter.set_tensor(self.inp["index"], np.ascontiguousarray(x.astype(dtype)))
        self.interpreter.invoke()
        y = self.interpreter.get_tensor(self.out["index"])
        if self.out["dtype"] in (np.int8, np.uint8):
            scale, zero = self.out["quantization"]
            y = (y.astype(np.float32) - zero) * scale
        return y.astype(np.float32)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        if self.fixed_batch:
            return np.concatenate([self._one(x[i:i + 1]) for i in range(x.shape[0])])
        return self._one(x)


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
            from .coreml_labels import classifier_labels

            self.labels = classifier_labels(spec)

    @property
    def version(self) -> str:
        import coremltools as ct

        return ct.__version__

    def _one(self, x: np.ndarray) -> np.ndarray:
        if self.is_image:
            from PIL import Image

            pixels = np.clip(np.round(x[0].transpose(1, 2, 0) * 255.0), 0, 255).astype(np.uint8)
            if self.bgr:
                pixels = pixels[..., ::-1]  # the model's BGR channels -> the RGB image an app holds
            feed = Image.fromarray(np.ascontiguousarray(pixels))
        else:
            feed = x.astype(np.float32)
        out = self.model.predict({self.input.name: feed})[self.output]
        if isinstance(out, dict):
            out = np.array([out[label] for label in self.labels], dtype=np.float32)
        return np.asarray(out, np.float32).reshape(1, -1)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return np.concatenate([self._one(x[i:i + 1]) for i in range(x.shape[0])])


def make_runner(path: str | Path, threads: int = 2, **kwargs) -> Runner:
    """Pick the runner by suffix. ``.mlpackage`` uses Core ML on macOS, else the reference executor."""
    suffix = Path(path).suffix
    if suffix == ".onnx":
        return OnnxRuntimeRunner(path, threads)
    if suffix == ".tflite":
        return LiteRTRunner(path, threads)
    if suffix == ".mlpackage":
        if coreml_runtime_available()[0]:
            return CoreMLRuntimeRunner(path, threads)
        try:
            from .coreml_reference import CoreMLReferenceRunner
        except ImportError as e:  # pragma: no cover - the executor ships with the package
            raise RunnerUnavailable(f"{coreml_runtime_available()[1]}, and the reference executor "
                                    f"is not importable ({e})") from e
        return CoreMLReferenceRunner(path, threads=threads, **kwargs)
    raise ValueError(f"no runner for {path}: unknown artifact type {suffix!r}")
