"""Real photographs that ship with installed packages (nothing is downloaded).

scikit-image, scikit-learn and matplotlib each carry a few real photos. Deterministic crops,
flips and rescales of them give as many realistic RGB inputs as calibration and drift need.
Two disjoint pools: validation and drift use :func:`base_photos`, calibration uses
:func:`calibration_base_photos` (other photographs), so no int8 artifact is ever validated on a
photo it was calibrated on. :func:`load_folder` reads the user's own folder instead, and
:func:`sample_batch` turns photos into a model-ready batch.
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from mobilevit.config import MobileViTConfig
from mobilevit.preprocess import preprocess

from .datasets import IMAGE_EXTS
from .folders import decode


def _skimage_photos() -> dict[str, np.ndarray]:
    import skimage.data as d

    return {n: getattr(d, n)() for n in ("astronaut", "coffee", "chelsea", "rocket")}


def _sklearn_photos() -> dict[str, np.ndarray]:
    import sklearn.datasets

    folder = Path(sklearn.datasets.__file__).parent / "images"
    return {p.stem: np.asarray(Image.open(p).convert("RGB")) for p in sorted(folder.glob("*.jpg"))}


def _matplotlib_photos() -> dict[str, np.ndarray]:
    import matplotlib

    folder = Path(matplotlib.get_data_path()) / "sample_data"
    return {p.stem: np.asarray(Image.open(p).convert("RGB")) for p in [folder / "grace_hopper.jpg"]
            if p.exists()}


@lru_cache(maxsize=1)
def calibration_base_photos() -> dict[str, np.ndarray]:
    """Name -> uint8 RGB photograph for calibration only: scikit-image photos not in :func:`base_photos`
    (grayscale ones repeated over three channels)."""
    import skimage.data as d

    photos = {"hubble_deep_field": d.hubble_deep_field(), "retina": d.retina(),
              "motorcycle": d.stereo_motorcycle()[0]}
    for name in ("camera", "coins", "moon", "grass", "gravel", "brick"):
        gray = getattr(d, name)()
        photos[name] = np.repeat(gray[..., None], 3, axis=-1)  # [H, W] -> [H, W, 3]
    return photos


@lru_cache(maxsize=1)
def base_photos() -> dict[str, np.ndarray]:
    """Name -> uint8 RGB ``[H, W, 3]`` photograph, from installed packages."""
    photos: dict[str, np.ndarray] = {}
    for source in (_skimage_photos, _sklearn_photos, _matplotlib_photos):
        photos.update(source())
    if not photos:
        raise RuntimeError("no sample photographs found: install scikit-image or scikit-learn")
    return photos


# photo pool -> its photographs (disjoint: see the module docstring)
POOLS = {"validation": base_photos, "calibration": calibration_base_photos}


def photo_variants(count: int, seed: int = 0, min_side: int = 160, pool: str = "validation") -> list[np.ndarray]:
    """``count`` deterministic views (random crop of 50-100% of the side, optional flip) of ``pool``'s photos.

    The first views are the whole photos, so small counts still show every photo once.
    """
    if pool not in POOLS:
        raise ValueError(f"unknown photo pool {pool!r}; choose one of: {', '.join(POOLS)}")
    rng = np.random.default_rng(seed)
    bases = list(POOLS[pool]().values())
    out: list[np.ndarray] = []
    for i in range(count):
        img = bases[i % len(bases)]
        if i >= len(bases):
            h, w = img.shape[:2]
            frac = rng.uniform(0.5, 1.0)
            ch, cw = max(min_side, int(h * frac)), max(min_side, int(w * frac))
            ch, cw = min(ch, h), min(cw, w)
            y, x = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
            img = img[y:y + ch, x:x + cw]
            if rng.random() < 0.5:
                img = img[:, ::-1]
        out.append(np.ascontiguousarray(img))
    return out


def load_folder(folder: str | Path, limit: int | None = None) -> list[np.ndarray]:
    """The first ``limit`` images under ``folder`` (sorted), as uint8 RGB arrays; a file that cannot be
    decoded raises :class:`data.folders.UnreadableImageError` naming it (bad input, not a crash)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder {folder} does not exist")
    files = image_files(folder)
    if not files:
        raise FileNotFoundError(f"no images ({', '.join(sorted(IMAGE_EXTS))}) found under {folder}")
    return [decode(p) for p in files[:limit]]


def image_files(folder: str | Path) -> list[Path]:
    """The image files under ``folder``, at any depth, sorted by path: the order :func:`load_folder` reads."""
    return sorted(p for p in Path(folder).rglob("*") if p.suffix.lower() in IMAGE_EXTS)


def sample_batch(cfg: MobileViTConfig, count: int = 8, size: int | None = None, seed: int = 0) -> torch.Tensor:
    """A preprocessed ``[count, 3, S, S]`` batch of :func:`photo_variants` for ``cfg``'s preprocessing."""
    return preprocess(photo_variants(count, seed), cfg, size)
