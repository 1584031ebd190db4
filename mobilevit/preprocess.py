"""Preprocessing the public MobileViT weights expect (the facts live in ``mobilevit.config.Preprocessing``).

Pure array work on images already decoded to uint8 RGB: reading files and finding photographs is
:mod:`data`'s job. PIL here only resizes arrays (bilinear); it opens no file.
"""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from .config import MobileViTConfig, Preprocessing


def resize_and_crop(rgb: np.ndarray, size: int, resize_short_side: int | None = None) -> np.ndarray:
    """Resize the short side (bilinear), center-crop ``size x size``; uint8 RGB in and out.

    ``resize_short_side`` defaults to the public eval pipeline's ratio (``Preprocessing.short_side``).
    """
    short = resize_short_side or Preprocessing().short_side(size)
    img = Image.fromarray(rgb)
    w, h = img.size
    scale = short / min(w, h)
    nw, nh = max(size, int(round(w * scale))), max(size, int(round(h * scale)))
    img = img.resize((nw, nh), Image.BILINEAR)
    left, top = (nw - size) // 2, (nh - size) // 2
    return np.asarray(img.crop((left, top, left + size, top + size)))


def to_tensor(rgb_crops: list[np.ndarray] | np.ndarray, pre: Preprocessing = Preprocessing()) -> torch.Tensor:
    """uint8 RGB ``[H, W, 3]`` crops -> float ``[B, 3, H, W]`` in the model's channel order and scale."""
    arr = np.stack(rgb_crops) if isinstance(rgb_crops, list) else rgb_crops[None]
    arr = arr.astype(np.float32) * pre.pixel_scale  # [B, H, W, 3] RGB
    if pre.channel_order == "BGR":
        arr = arr[..., ::-1]  # RGB -> BGR
    return torch.from_numpy(np.ascontiguousarray(arr.transpose(0, 3, 1, 2)))  # -> [B, 3, H, W]


def preprocess(images: list[np.ndarray], cfg: MobileViTConfig, size: int | None = None) -> torch.Tensor:
    """Full eval pipeline for a list of uint8 RGB images."""
    size = size or cfg.preprocessing.crop_size
    short = cfg.preprocessing.short_side(size)
    return to_tensor([resize_and_crop(im, size, short) for im in images], cfg.preprocessing)

