"""onnxruntime's CPU session as a runner (``export.runners.Runner``)."""
from __future__ import annotations

import numpy as np

from ...runners import Runner


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
