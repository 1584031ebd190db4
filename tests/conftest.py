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
    from mobilevit.images import photo_variants

    return photo_variants(8)


@pytest.fixture(scope="session")
def synthetic_xxs():
    from mobilevit.synthetic import synthetic_model

    return synthetic_model("xx_small")
