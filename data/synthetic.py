"""MobileViTs with calibrated synthetic weights, their BatchNorm statistics taken on the package photos.

:func:`mobilevit.synthetic.calibrated_init_` does the work and is handed the photographs here, so the
model package never reads a photo. Same seed, same weights: the photos are a fixed, seeded set.
"""
from __future__ import annotations

from mobilevit.model import MobileViT
from mobilevit.segmentation import MobileViTSegmentation
from mobilevit.synthetic import calibrated_init_

from .photos import sample_batch

CALIBRATION_PHOTOS = 16  # views of the validation pool that set the BatchNorm statistics


def synthetic_model(variant: str = "small", patches: str = "reference", seed: int = 0,
                    **kwargs) -> MobileViT:
    """A MobileViT with calibrated synthetic weights, in eval mode."""
    model = MobileViT(variant, patches=patches, **kwargs)
    images = sample_batch(model.cfg, count=CALIBRATION_PHOTOS, size=model.cfg.input_size, seed=seed)
    return calibrated_init_(model, images, seed=seed)


def synthetic_segmentation_model(variant: str = "small", patches: str = "reference", seed: int = 0,
                                 size: int | None = None, **kwargs) -> MobileViTSegmentation:
    """A DeepLabV3-MobileViT with calibrated synthetic weights, in eval mode.

    BatchNorm statistics come from photographs at ``size`` (the public 512 by default; a smaller size
    calibrates faster, and the statistics of these synthetic weights hardly depend on it).
    """
    model = MobileViTSegmentation(variant, patches=patches, **kwargs)
    images = sample_batch(model.cfg, count=CALIBRATION_PHOTOS, size=size or model.cfg.input_size, seed=seed)
    return calibrated_init_(model, images, seed=seed)
