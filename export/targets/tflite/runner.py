"""LiteRT (the TFLite interpreter, XNNPACK) as a runner (``export.runners.Runner``)."""
from __future__ import annotations

import numpy as np

from ...runners import Runner


class LiteRTRunner(Runner):
    """TFLite through ai-edge-litert (XNNPACK); NHWC input unless the model says NCHW.

    A model whose metadata (``export.targets.tflite.metadata``) says it takes RGB where its PyTorch reference took
    BGR gets the batch's channels reversed, as an app would hand it an RGB image."""

    runtime = "litert"

    def __init__(self, path, threads: int = 2, preserve_all_tensors: bool = False):
        super().__init__(path, threads)
        from ai_edge_litert.interpreter import Interpreter, OpResolverType

        if preserve_all_tensors:  # built-in kernels: a delegate (XNNPACK) does not materialise its intermediates
            self.interpreter = Interpreter(
                model_path=str(self.path), num_threads=threads, experimental_preserve_all_tensors=True,
                experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
        else:
            self.interpreter = Interpreter(model_path=str(self.path), num_threads=threads)
        self.interpreter.allocate_tensors()
        self.inp = self.interpreter.get_input_details()[0]
        self.out = self.interpreter.get_output_details()[0]
        shape = list(self.inp["shape"])
        self.nhwc = shape[-1] == 3 and shape[1] != 3
        self.fixed_batch = shape[0] == 1
        from .metadata import read_json

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

    # --- intermediates (drift localisation), with ``preserve_all_tensors=True``
    def op_details(self) -> list[dict]:
        """Ops in execution order: ``{"op_name", "inputs", "outputs"}`` (tensor indices)."""
        return self.interpreter._get_ops_details()

    def tensor_details(self) -> dict[int, dict]:
        """``{index: {"name", "shape"}}`` of every tensor (NHWC for feature maps)."""
        return {d["index"]: {"name": d["name"], "shape": tuple(int(s) for s in d["shape"])}
                for d in self.interpreter.get_tensor_details()}

    def tensor_value(self, index: int) -> np.ndarray:
        """Tensor ``index`` after the last run, dequantised with its own scale and zero point."""
        detail = next(d for d in self.interpreter.get_tensor_details() if d["index"] == index)
        v = self.interpreter.get_tensor(index).astype(np.float32)
        scale, zero = detail["quantization"]
        return (v - zero) * scale if detail["dtype"] in (np.int8, np.uint8, np.int16) and scale else v


def preserving_runner(path) -> LiteRTRunner:
    """A 1-thread LiteRT runner that keeps every intermediate tensor (built-in kernels, no XNNPACK)."""
    return LiteRTRunner(path, threads=1, preserve_all_tensors=True)
