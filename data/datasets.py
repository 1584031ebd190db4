"""Labelled image datasets for fine-tuning, held in memory as model-ready tensors.

* ``digits``: scikit-learn's ``load_digits`` (1,797 real 8x8 handwritten digits, 10 classes; ships
  with the package, no download), upscaled bilinearly and replicated to 3 channels.
* an image folder ``root/class_name/*.jpg|png``.

Both become float ``[N, 3, S, S]`` tensors in the model's input format (pixels / 255, BGR) at the
largest training size; batches are resized down on the fly by the multi-scale sampler.
A fixed, seeded, stratified split gives the validation set.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from mobilevit.preprocess import resize_and_crop, to_tensor

IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}


class DatasetError(ValueError):
    """A dataset that cannot be used (missing, empty, a single class)."""


@dataclass
class Split:
    images: torch.Tensor  # [N, 3, S, S] float in [0, 1], BGR
    labels: torch.Tensor  # [N] int64


@dataclass
class LabelledData:
    train: Split
    val: Split
    class_names: list[str]
    name: str


def stratified_split(labels: np.ndarray, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, val): each class contributes ``val_fraction`` of its samples to val."""
    rng = np.random.default_rng(seed)
    train, val = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        k = max(1, int(round(len(idx) * val_fraction)))
        val += idx[:k].tolist()
        train += idx[k:].tolist()
    return np.sort(np.array(train)), np.sort(np.array(val))


def _split(images: torch.Tensor, labels: np.ndarray, val_fraction: float, seed: int):
    tr, va = stratified_split(labels, val_fraction, seed)
    lab = torch.from_numpy(labels.astype(np.int64))
    return Split(images[tr], lab[tr]), Split(images[va], lab[va])


def digits(size: int = 64, val_fraction: float = 0.2, seed: int = 0) -> LabelledData:
    """scikit-learn's handwritten digits, upscaled to ``size``."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.from_numpy(d.images.astype(np.float32) / 16.0)[:, None]  # [N, 1, 8, 8] in [0, 1]
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False).clamp(0, 1)
    x = x.expand(-1, 3, -1, -1).contiguous()  # grey -> 3 channels (BGR == RGB here)
    train, val = _split(x, d.target, val_fraction, seed)
    return LabelledData(train, val, [str(i) for i in range(10)], "digits")


def image_folder(root: str | Path, size: int = 128, val_fraction: float = 0.2, seed: int = 0) -> LabelledData:
    """``root/class_name/*.jpg``: resize short side, center crop ``size``, BGR / 255."""
    from PIL import Image

    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"dataset folder {root} does not exist: pass --dataset digits or a folder "
                           "laid out as root/class_name/*.jpg")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir()
                     and any(f.suffix.lower() in IMAGE_EXTS for f in p.iterdir()))
    if len(classes) < 2:
        raise DatasetError(f"{root} has {len(classes)} class folder(s) with images; fine-tuning needs at least 2 "
                           "(root/class_name/*.jpg)")
    crops, labels = [], []
    for c, name in enumerate(classes):
        for f in sorted((root / name).iterdir()):
            if f.suffix.lower() in IMAGE_EXTS:
                crops.append(resize_and_crop(np.asarray(Image.open(f).convert("RGB")), size))
                labels.append(c)
    x = to_tensor(crops)
    train, val = _split(x, np.array(labels), val_fraction, seed)
    return LabelledData(train, val, classes, root.name)


def load(name: str, size: int, seed: int = 0) -> LabelledData:
    """``digits`` or a folder path."""
    return digits(size, seed=seed) if name == "digits" else image_folder(name, size, seed=seed)
