"""Runners: execute an exported artifact on a preprocessed batch, one class per runtime.

Every runner takes the same input as the PyTorch model, a float32 ``[B, 3, H, W]`` array in the
model's channel order and scale (see :mod:`mobilevit.preprocess`), and returns float32 logits
``[B, num_classes]``. Layout changes (NHWC for TFLite), image inputs (Core ML ``ImageType``) and
int8 quantization of inputs are the runner's job, so benchmarks and validation compare like with
like.

A call is split in two so that benchmarks time only the runtime: ``prepare(x)`` converts the
input (dtype, layout) and ``run(feed)`` invokes the runtime. ``settings`` records the runtime
options that change speed (threads, spinning), for the benchmark JSON.
"""
from __future__ import annotations

import platform
from pathlib import Path

import numpy as np

from .config import load, target_for_path
from .errors import RunnerUnavailable

__all__ = ["Runner", "RunnerUnavailable", "OnnxRuntimeRunner", "LiteRTRunner", "CoreMLRuntimeRunner",
           "coreml_runner", "coreml_runtime_available", "make_runner"]


class Runner:
    """Base class: ``runtime``, ``version``, ``settings``, ``prepare``/``run``, ``__call__(x) -> logits``."""

    runtime = "base"
    fixed_batch = True  # the artifact takes one image at a time
    timeable = True  # its latency means something (False for a reference executor)

    def __init__(self, path: str | Path, threads: int = 2):
        self.path = Path(path)
        self.threads = threads

    @property
    def version(self) -> str:  # pragma: no cover - overridden
        return "unknown"

    @property
    def settings(self) -> dict:
        return {"threads": self.threads}

    def prepare(self, x: np.ndarray):
        """The runtime's input for the batch ``x`` (conversions that are not the model's work)."""
        return x

    def run(self, feed) -> np.ndarray:  # pragma: no cover - overridden
        """Invoke the runtime on a prepared feed; float32 logits."""
        raise NotImplementedError

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """Logits for a batch; one image at a time if the artifact has a fixed batch of 1."""
        if self.fixed_batch and x.shape[0] > 1:
            return np.concatenate([self.run(self.prepare(x[i:i + 1])) for i in range(x.shape[0])])
        return self.run(self.prepare(x))


class OnnxRuntimeRunner(Runner):
    runtime = "onnxruntime"

    def __init__(self, path, threads: int = 2, spinning: bool = False):
        super().__init__(path, threads)
        import onnxruntime as ort

        self.spinning = spinning
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        # Spinning worker threads keep a core busy after each call; on a 2-core machine they steal it
        # from whatever runs next (the next runtime in a benchmark round), so spinning is off by default.
        opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
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

    @property
    def settings(self) -> dict:
        return {"threads": self.threads, "inter_op_threads": 1, "intra_op.allow_spinning": int(self.spinning),
                "graph_optimization_level": "ORT_ENABLE_ALL", "provider": "CPUExecutionProvider"}

    def prepare(self, x: np.ndarray):
        return {self.input_name: np.ascontiguousarray(x, dtype=self.input_dtype)}

    def run(self, feed) -> np.ndarray:
        return self.session.run(None, feed)[0].astype(np.float32)


class LiteRTRunner(Runner):
    """TFLite through ai-edge-litert (XNNPACK); NHWC input unless the model says NCHW.

    A model whose metadata (``export.tflite_metadata``) says it takes RGB where its PyTorch reference took
    BGR gets the batch's channels reversed, as an app would hand it an RGB image."""

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
        from .tflite_metadata import read_json

        meta = read_json(self.path.read_bytes())
        self.reverse_channels = meta.get("channel_order", "") != meta.get("reference_channel_order", "")
        self.nhwc_out = meta.get("output_layout") == "NHWC"  # onnx2tf's layout for a 4-D output (segmentation)

    @property
    def version(self) -> str:
        import ai_edge_litert

        return getattr(ai_edge_litert, "__version__", "2.1.0")

    @property
    def settings(self) -> dict:
        return {"threads": self.threads, "delegate": "XNNPACK (default)"}

    def prepare(self, x: np.ndarray):
        if self.reverse_channels:
            x = x[:, ::-1]  # [B, 3, H, W]: the reference's BGR -> the artifact's RGB
        if self.nhwc:
            x = x.transpose(0, 2, 3, 1)  # [B, 3, H, W] -> [B, H, W, 3]
        dtype = self.inp["dtype"]
        if dtype in (np.int8, np.uint8):
            scale, zero = self.inp["quantization"]
            x = np.clip(np.round(x / scale + zero), np.iinfo(dtype).min, np.iinfo(dtype).max)
        return np.ascontiguousarray(x.astype(dtype))

    def run(self, feed) -> np.ndarray:
        self.interpreter.set_tensor(self.inp["index"], feed)
        self.interpreter.invoke()
        y = self.interpreter.get_tensor(self.out["index"])
        if self.out["dtype"] in (np.int8, np.uint8):
            scale, zero = self.out["quantization"]
            y = (y.astype(np.float32) - zero) * scale
        if self.nhwc_out:
            y = y.transpose(0, 3, 1, 2)  # [B, h, w, K] -> [B, K, h, w], as PyTorch returns it
        return y.astype(np.float32)


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


def coreml_runner(path: str | Path, threads: int = 2, **kwargs) -> Runner:
    """Core ML itself on macOS; elsewhere the reference executor (``export.coreml_reference``)."""
    if coreml_runtime_available()[0]:
        return CoreMLRuntimeRunner(path, threads, **kwargs)
    from .coreml_reference import CoreMLReferenceRunner

    return CoreMLReferenceRunner(path, threads=threads, **kwargs)


def make_runner(path: str | Path, threads: int = 2, **kwargs) -> Runner:
    """The runner of the target whose artifacts end like ``path`` (``export.config.TARGETS``)."""
    return load(target_for_path(path).runner)(path, threads, **kwargs)
