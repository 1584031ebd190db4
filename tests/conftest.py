import os
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
# onnx2tf runs `onnxsim` by name: make the venv's bin reachable.
os.environ["PATH"] = str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", "")
torch.set_num_threads(2)


@pytest.fixture(scope="session")
def photos():
    from data.photos import photo_variants

    return photo_variants(8)


@pytest.fixture(scope="session")
def synthetic_xxs():
    from data.synthetic import synthetic_model

    return synthetic_model("xx_small")


# `make test-fast` (pytest -m "not slow") skips what converts a model or trains one; `make test` and CI run all.
SLOW_MODULES = {"test_accuracy", "test_export_coreml", "test_export_segmentation", "test_export_executorch",
                "test_export_onnx", "test_export_tflite", "test_tflite_full_int8", "test_reproducible", "test_quant",
                "test_benchmarks_tflite", "test_train"}
SLOW_FIXTURES = {"photos_xxs", "converted"}  # whole-model Core ML programs; the accuracy run with ONNX artifacts
SLOW_TESTS = {"test_failed_validation_writes_nothing", "test_a_partly_failed_export_says_exactly_what_was_published",
              "test_checkpoint_export_takes_its_variant_and_records_its_origin",
              "test_default_export_prints_only_our_own_lines"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if (item.module.__name__.rsplit(".", 1)[-1] in SLOW_MODULES or SLOW_FIXTURES & set(item.fixturenames)
                or item.originalname in SLOW_TESTS):
            item.add_marker(pytest.mark.slow)
