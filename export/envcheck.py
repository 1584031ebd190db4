"""``python -m export.envcheck``: can every runtime the toolkit drives be imported? `make setup` ends with it.

It prints one line of its own, ``environment ok, torch <version>``; the imports' noise (TensorFlow's C++
logs, coremltools' and torchao's version and library warnings) goes to /dev/null (``export.quiet``). A
module that fails to import is named with its error, and the exit code is 1.
"""
from __future__ import annotations

import importlib
import sys

MODULES = ("torch", "coremltools", "onnxruntime", "onnx2tf", "ai_edge_litert", "executorch.runtime", "mediapipe")


def main() -> int:
    from .quiet import configure, silenced

    configure()  # the environment the noisy libraries read when they load (TF_CPP_MIN_LOG_LEVEL, ...)
    failed = []
    with silenced():
        for name in MODULES:
            try:
                importlib.import_module(name)
            except Exception as e:  # an ImportError, or a library that breaks while loading
                failed.append(f"{name}: {type(e).__name__}: {e}")
    if failed:
        print("environment broken, these modules do not import (rerun `make setup`):", file=sys.stderr)
        for line in failed:
            print(f"  {line}", file=sys.stderr)
        return 1
    print(f"environment ok, torch {sys.modules['torch'].__version__}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
