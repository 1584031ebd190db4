"""Fine-tuning: a short real run beats chance, checkpoints reload, training resumes, folders load."""
import numpy as np
import pytest
import torch
from PIL import Image

from data.datasets import DatasetError, digits, image_folder, stratified_split
from mobilevit.checkpoints import load_checkpoint, load_model
from training.finetune import evaluate, main, train


@pytest.fixture(scope="module")
def data(digits_64):
    return digits_64


@pytest.fixture(scope="module")
def short_run(fine_tuned):
    """The session's 2-epoch fine-tuning run (tests/conftest.py; test_accuracy measures its checkpoint)."""
    return fine_tuned


def test_digits_split_is_stratified_and_fixed():
    d = digits(size=32)
    assert len(d.train.labels) + len(d.val.labels) == 1797 and len(d.class_names) == 10
    counts = torch.bincount(d.val.labels, minlength=10)
    assert counts.min() >= 34 and counts.max() <= 38  # ~20% of each class
    assert torch.equal(digits(size=32).val.labels, d.val.labels)
    tr, va = stratified_split(np.array([0] * 10 + [1] * 10), 0.2, seed=1)
    assert len(va) == 4 and not set(tr) & set(va)


def test_short_fine_tune_beats_chance_by_far(short_run):
    _, summary = short_run
    assert summary["val_top1"] >= 0.4, summary["history"]  # chance is 10%
    assert len(summary["history"]) == 2


def test_checkpoint_reloads_with_same_predictions(short_run, data):
    cfg, summary = short_run
    ckpt = load_checkpoint(summary["checkpoint"])
    assert ckpt.format == "ours" and ckpt.class_names == [str(i) for i in range(10)] and ckpt.num_classes == 10
    model = load_model(summary["checkpoint"])
    acc, _ = evaluate(model, data.val, 64)
    assert acc == pytest.approx(summary["val_top1"])


def test_resume_continues_from_the_saved_epoch(short_run, data, tmp_path):
    """Resumed in a copy of the run's folder: the shared run's checkpoint stays as it was trained."""
    import shutil
    from dataclasses import replace

    cfg, summary = short_run
    out = shutil.copytree(cfg.out, tmp_path / "ft")
    more = train(replace(cfg, epochs=3, out=str(out)), resume=True, data=data, progress=False)
    assert [h["epoch"] for h in more["history"]] == [1, 2, 3]
    assert more["history"][:2] == summary["history"]


def test_image_folder_dataset(tmp_path):
    from data.photos import base_photos

    photos = base_photos()
    for name in ("astronaut", "coffee"):
        (tmp_path / name).mkdir()
        img = photos[name]
        for i in range(5):
            crop = img[i * 20:i * 20 + 200, i * 30:i * 30 + 200]
            Image.fromarray(crop).save(tmp_path / name / f"{i}.png")
    (tmp_path / "empty").mkdir()
    d = image_folder(tmp_path, size=64)
    assert d.class_names == ["astronaut", "coffee"]
    assert d.train.images.shape[1:] == (3, 64, 64) and len(d.train.labels) + len(d.val.labels) == 10


def test_bad_dataset_folders(tmp_path, capsys):
    with pytest.raises(DatasetError, match="does not exist"):
        image_folder(tmp_path / "missing")
    (tmp_path / "only").mkdir()
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(tmp_path / "only" / "a.png")
    with pytest.raises(DatasetError, match="needs at least 2"):
        image_folder(tmp_path)
    assert main(["--dataset", str(tmp_path / "missing"), "--out", str(tmp_path / "o")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["--sizes", "60,64"]) == 2


def test_python_dash_m_training_is_the_fine_tuning_command(tmp_path):
    """``python -m training`` (``make finetune``) runs :func:`training.finetune.main`: a bad size exits 2
    with the reason, before any data is loaded or anything is written."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    run = subprocess.run([sys.executable, "-m", "training", "--sizes", "64,100", "--out", str(tmp_path / "o")],
                         cwd=root, capture_output=True, text=True, timeout=300)
    assert run.returncode == 2 and "sizes [100] are not multiples of 32" in run.stderr, run.stderr
    assert not (tmp_path / "o").exists()
    usage = subprocess.run([sys.executable, "-m", "training", "--help"], cwd=root, capture_output=True, text=True,
                           timeout=300)
    assert usage.returncode == 0 and usage.stdout.startswith("usage: python -m training")
