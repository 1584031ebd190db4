"""The one conversion entry point: ``convert(model, target, precision, workdir) -> artifact path``.

Everything that turns a PyTorch model into an artifact goes through here: the CLI's pipeline,
the latency/drift benchmarks, accuracy drift, drift localisation and the patch-strategy
measurements. It looks the target up in the registry (``export.config.TARGETS``), checks the
request, fills calibration photos where the precision needs them, and calls the target's
converter; a converter's own exception comes back as :class:`ConversionError`.

    from export import convert, with_target_defaults
    model = with_target_defaults(synthetic_model("xx_small"), "onnx")
    path = convert(model, "onnx", "int8", "work/")  # -> work/model_int8.onnx
"""
from __future__ import annotations

import copy
from dataclasses import fields
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from mobilevit import DEFAULT_SIZE, MobileViT

from .config import check_precision, check_sizes, load, target_config
from .errors import ConversionError, ExportConfigError, ExportError
from .int8 import Int8Options

# How many real photos calibrate a conversion when the caller gives none, and their seed (the
# validation photos use another seed, so nothing is validated on the crops it was calibrated on).
CALIBRATION_IMAGES = 32
CALIBRATION_SEED = 7


def with_target_defaults(model: MobileViT, target: str) -> MobileViT:
    """A copy of ``model`` (same weights) with ``target``'s default patch strategy and attention layout."""
    cfg = target_config(target)
    if not isinstance(model, MobileViT):  # a segmentation model (mobilevit.segmentation): its backbone's settings
        return copy.deepcopy(model).eval().set_patches(cfg.default_patches).set_attention(cfg.default_attention)
    m = MobileViT(model.cfg, patches=cfg.default_patches, features_only=model.features_only,
                  out_indices=model.out_indices).eval()
    m.load_state_dict(model.state_dict())
    return m.set_attention(cfg.default_attention)


def calibration_photos(cfg=None, size: int = DEFAULT_SIZE, count: int = CALIBRATION_IMAGES,
                       folder: str | Path | None = None) -> np.ndarray:
    """Preprocessed real photos for calibration: ``folder``'s, or views of the photos packages ship."""
    from data.photos import load_folder, photo_variants
    from mobilevit import get_config
    from mobilevit.preprocess import preprocess

    cfg = cfg or get_config("small")
    images = (load_folder(folder, limit=count) if folder
              else photo_variants(count, seed=CALIBRATION_SEED, pool="calibration"))
    return preprocess(images, cfg, size).numpy()


def _sizes(size: int | Sequence[int]) -> tuple[int, ...]:
    return (size,) if isinstance(size, int) else tuple(size)


def target_options(target: str, options: dict, precisions: Sequence[str] = ()):
    """The target's options dataclass from keyword arguments; an unknown keyword is refused, not ignored,
    and so are int8 options (``float_kinds``) for ``precisions`` that would ignore them."""
    cls = load(target_config(target).options)
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise ExportConfigError(f"{target} has no option {', '.join(unknown)}; "
                                f"its options are: {', '.join(sorted(known))}")
    opts = cls(**options)
    if isinstance(opts, Int8Options):
        opts.check_precisions(precisions)
    return opts


def parse_options(target: str, pairs: Sequence[str]) -> tuple[tuple[str, object], ...]:
    """``KEY=VALUE`` strings (the CLI's ``--option``) as the target's typed options: the type is the option's
    default's (bool: true/false, int, float, tuple: comma list, str); an unknown key or a bad value is refused."""
    cls = load(target_config(target).options)
    defaults = {f.name: f.default for f in fields(cls)}
    out = []
    for pair in pairs:
        key, sep, text = pair.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or key not in defaults:
            raise ExportConfigError(f"--option {pair!r}: {target} takes KEY=VALUE with KEY one of: "
                                    f"{', '.join(sorted(defaults))}")
        kind = type(defaults[key])
        try:
            if kind is bool:
                if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError(text)
                value = text.lower() in ("true", "1", "yes")
            elif kind in (int, float):
                value = kind(text)
            elif kind is tuple:
                value = tuple(v.strip() for v in text.split(",") if v.strip())
            else:
                value = text
        except ValueError:
            raise ExportConfigError(f"--option {key}={text}: not a valid {kind.__name__}") from None
        out.append((key, value))
    return tuple(out)


def convert_all(model: torch.nn.Module, target: str, precisions: Sequence[str], workdir: str | Path, *,
                size: int | Sequence[int] = DEFAULT_SIZE, calibration: np.ndarray | None = None,
                **options) -> dict[str, Path]:
    """Convert ``model`` to every precision in ``precisions`` at once: ``{precision: artifact}``.

    Cheaper than one :func:`convert` per precision where the target shares work between precisions
    (ONNX exports fp32 once; onnx2tf writes every TFLite precision in one run). ``model`` maps a
    float ``[B, 3, H, W]`` batch to logits; for a MobileViT, use :func:`with_target_defaults` to get the
    rewrites the target was measured best with. ``options`` are the target's (``export.config``).
    The target's model rewrites (``TargetConfig.rewrites``) are applied to a copy of ``model``, unless
    the options ask for the ``as-is`` exporter (the model exactly as given).
    """
    cfg = target_config(target)
    precisions = tuple(dict.fromkeys(precisions))
    if not precisions:
        raise ExportConfigError(f"no precision asked for; {target} offers: {', '.join(cfg.precisions)}")
    for p in precisions:
        check_precision(target, p)
    sizes = check_sizes(target, _sizes(size))
    opts = target_options(target, options, precisions)
    if calibration is None and set(precisions) & set(cfg.calibrated):
        calibration = calibration_photos(getattr(model, "cfg", None), sizes[0])
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    converter = load(cfg.converter)
    if cfg.rewrites and getattr(opts, "exporter", "ours") != "as-is":
        from mobilevit.rewrites import apply_rewrites

        model = apply_rewrites(copy.deepcopy(model), cfg.rewrites)
    try:
        with torch.no_grad():
            made = converter(model.eval(), precisions, workdir, sizes=sizes, calibration=calibration, options=opts)
    except ExportError:
        raise
    except Exception as e:  # coremltools / torch.onnx / onnxruntime.quantization / onnx2tf
        raise ConversionError(f"{target} conversion failed: {type(e).__name__}: {e}") from e
    missing = [p for p in precisions if p not in made or not Path(made[p]).exists()]
    if missing:
        raise ConversionError(f"{target} converter produced no artifact for {', '.join(missing)}")
    return {p: Path(made[p]) for p in precisions}


def convert(model: torch.nn.Module, target: str, precision: str, workdir: str | Path, *,
            size: int | Sequence[int] = DEFAULT_SIZE, calibration: np.ndarray | None = None, **options) -> Path:
    """Convert ``model`` to one ``target`` artifact at ``precision`` inside ``workdir``; returns its path."""
    return convert_all(model, target, (precision,), workdir, size=size, calibration=calibration,
                       **options)[precision]
