"""MobileViTs with calibrated synthetic weights, their BatchNorm statistics taken on the package photos.

:func:`mobilevit.synthetic.calibrated_init_` does the work and is handed the photographs here, so the
model package never reads a photo. Same seed, same weights: the photos are a fixed, seeded set.

The calibration (two passes over 16 photos at full size) costs as much as a few seconds of inference, so a
process computes each configuration's weights once and hands out fresh models loaded with a copy of them
(the pipeline, the benchmarks and the tests build the same xx_small many times in one process).
"""
from __future__ import annotations

from mobilevit.model import MobileViT
from mobilevit.segmentation import MobileViTSegmentation
from mobilevit.synthetic import calibrated_init_

from .photos import sample_batch

CALIBRATION_PHOTOS = 16  # views of the validation pool that set the BatchNorm statistics

# (model class, calibration size, seed, (variant, patches, other arguments)) -> calibrated state dict
_WEIGHTS: dict[tuple, dict] = {}


def synthetic_model(variant: str = "small", patches: str = "reference", seed: int = 0,
                    **kwargs) -> MobileViT:
    """A MobileViT with calibrated synthetic weights, in eval mode."""
    model = MobileViT(variant, patches=patches, **kwargs)
    return _calibrated(model, model.cfg.input_size, seed, (variant, patches, *sorted(kwargs.items())))


def synthetic_segmentation_model(variant: str = "small", patches: str = "reference", seed: int = 0,
                                 size: int | None = None, **kwargs) -> MobileViTSegmentation:
    """A DeepLabV3-MobileViT with calibrated synthetic weights, in eval mode.

    BatchNorm statistics come from photographs at ``size`` (the public 512 by default; a smaller size
    calibrates faster, and the statistics of these synthetic weights hardly depend on it).
    """
    model = MobileViTSegmentation(variant, patches=patches, **kwargs)
    return _calibrated(model, size or model.cfg.input_size, seed, (variant, patches, *sorted(kwargs.items())))


def forget_synthetic_weights() -> None:
    """Drop the weights computed so far: the next call calibrates again (a test of the seeding needs that)."""
    _WEIGHTS.clear()


def _calibrated(model, size: int, seed: int, arguments: tuple):
    """``model`` with the weights calibrated at ``size`` with ``seed`` for the model built from ``arguments``:
    computed on the first call, loaded from a copy after."""
    key = (type(model).__name__, size, seed, arguments)
    try:
        hash(key)
    except TypeError:  # an argument that cannot key a cache (a list): calibrate every time
        key = None
    if key in _WEIGHTS:
        model.load_state_dict(_WEIGHTS[key])
        return model.eval()
    images = sample_batch(model.cfg, count=CALIBRATION_PHOTOS, size=size, seed=seed)
    model = calibrated_init_(model, images, seed=seed)
    if key is not None:
        _WEIGHTS[key] = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return model
