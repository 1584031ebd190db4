import os
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
# onnx2tf runs `onnxsim` by name: make the venv's bin reachable.
os.environ["PATH"] = str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", "")
# `make test` runs the suite on pytest-xdist workers (TEST_WORKERS, 2 by default): the cores are shared among them
WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
SHARE = max(1, min(2, (os.cpu_count() or 1) // WORKERS))
torch.set_num_threads(SHARE)
# ... and every runner made without a thread count (validation) runs at that share, in this process and in the
# processes it starts: 2 workers at 2 threads each on 2 cores ran the reference executor 4.6x slower (measured)
os.environ.setdefault("MOBILEVIT_THREADS", str(SHARE))


def pytest_configure(config):
    if os.environ.get("PYTEST_XDIST_WORKER"):  # a worker's basetemp is a folder of the run's own basetemp
        from tests import export_helpers

        export_helpers.SHARED = Path(config.option.basetemp).parent / "shared-exports"


@pytest.fixture(scope="session")
def photos():
    from data.photos import photo_variants

    return photo_variants(8)


@pytest.fixture(scope="session")
def synthetic_xxs():
    from data.synthetic import synthetic_model

    return synthetic_model("xx_small")


@pytest.fixture(scope="session")
def digits_64():
    """scikit-learn's digits at 64x64 (data.datasets), the split every fine-tuning test uses."""
    from data.datasets import digits

    return digits(size=64)


@pytest.fixture(scope="session")
def fine_tuned(tmp_path_factory, digits_64):
    """xx_small fine-tuned on the digits for 2 epochs at 64x64, once per session, whichever worker asks first (the
    others read its result: training twice cost 355 s of one worker): ``(TrainConfig, summary)``. The training
    tests, the accuracy demo's test and a top-1 int8 search read its checkpoint; none writes into its folder. It
    trains at the worker's share of the cores (``train`` leaves torch at ``cfg.threads``)."""
    from tests import export_helpers
    from training.finetune import TrainConfig, train

    def run(out: Path):
        cfg = TrainConfig(variant="xx_small", epochs=2, sizes=(64,), base_size=64, base_batch=32, lr=3e-3,
                          out=str(out), warmup_epochs=0.3, threads=SHARE)
        return cfg, train(cfg, data=digits_64, progress=False)

    if export_helpers.SHARED is None:
        return run(tmp_path_factory.mktemp("ft"))
    return export_helpers.across_workers("fine_tuned", run)


@pytest.fixture(scope="session")
def decompression_bomb() -> bytes:
    """A 138-byte PNG whose header claims 30000x30000 pixels (900 Mpixel, over PIL's 179 Mpixel refusal limit);
    its IDAT is 16 zlib-compressed all-zero rows (PIL refuses the header before it reads any pixel)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    side = 30000
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)  # 1-bit grayscale, no interlace
    rows = zlib.compress(bytes(1 + side // 8) * 16, 9)  # filter byte + 3750 bytes per row
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", rows) + chunk(b"IEND", b"")


@pytest.fixture
def small_disk(tmp_path):
    """A real 2 MiB file system (tmpfs) mounted for the test and unmounted after: a write past 2 MiB fails with
    ENOSPC. Mounting needs root (as in this project's container); elsewhere the test is skipped, saying so."""
    import subprocess

    disk = tmp_path / "disk"
    disk.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(disk)], capture_output=True,
                          text=True)
    if done.returncode != 0:
        pytest.skip(f"skipped: cannot mount a 2 MiB tmpfs here ({done.stderr.strip()}); run as root")
    try:
        yield disk
    finally:
        subprocess.run(["umount", str(disk)], check=True)


# `make test-fast` (pytest -m "not slow") skips what converts a model or trains one; `make test` and CI run all.
SLOW_MODULES = {"test_accuracy", "test_export_coreml", "test_export_segmentation", "test_export_executorch",
                "test_export_onnx", "test_export_tflite", "test_tflite_full_int8", "test_reproducible", "test_quant",
                "test_benchmarks_tflite", "test_train"}
SLOW_FIXTURES = {"photos_xxs", "converted", "ray_cluster", "fine_tuned"}  # whole-model Core ML programs; the
# accuracy run with ONNX artifacts; a Ray cluster; a fine-tuning run
SLOW_TESTS = {"test_failed_validation_writes_nothing", "test_a_partly_failed_export_says_exactly_what_was_published",
              "test_checkpoint_export_takes_its_variant_and_records_its_origin",
              "test_default_export_prints_only_our_own_lines", "test_a_full_output_disk_exits_2_naming_it",
              "test_environment_check_prints_one_line_of_its_own",
              "test_onnx_search_returns_a_planted_sensitive_layer_to_float_first",
              "test_an_onnx_export_with_a_budget_searches_validates_and_records_it",
              "test_tflite_search_ranks_a_planted_sensitive_layer_first_and_returns_it_to_float_first",
              "test_a_tflite_export_with_a_budget_searches_validates_and_records_it"}


@pytest.hookimpl(optionalhook=True, tryfirst=True)
def pytest_xdist_make_scheduler(config, log):
    """Under pytest-xdist (`make test`), a module's tests stay on one worker, so its module fixtures are made
    once, as with ``--dist loadfile``; and the modules that start Ray clusters share one worker, since the
    `ray stop --force` that ends one ends every cluster of the machine."""
    from xdist.scheduler import LoadScopeScheduling

    class ModulesTogether(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            module = nodeid.split("::", 1)[0]
            return "ray" if Path(module).stem in RAY_MODULES else module

    return ModulesTogether(config, log)


RAY_MODULES = {"test_accuracy_folders", "test_quant"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if (item.module.__name__.rsplit(".", 1)[-1] in SLOW_MODULES or SLOW_FIXTURES & set(item.fixturenames)
                or item.originalname in SLOW_TESTS):
            item.add_marker(pytest.mark.slow)
