"""``python -m export {coreml,onnx,tflite,all}``: export MobileViT, validate it, publish it atomically.

Exit codes: 0 exported and validated; 2 bad request (unknown name, bad size, bad checkpoint,
unwritable or existing output); 3 validation failed (nothing written); 4 conversion failed.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

EXIT_OK, EXIT_BAD_REQUEST, EXIT_VALIDATION, EXIT_CONVERSION = 0, 2, 3, 4


def parser() -> argparse.ArgumentParser:
    from mobilevit import STRATEGIES, VARIANTS

    from .config import TARGETS

    p = argparse.ArgumentParser(
        prog="python -m export", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Export MobileViT to Core ML, ONNX or TFLite; every artifact is run in its "
                    "runtime on real photographs and compared with PyTorch before it is written.",
        epilog="targets and precisions:\n" + "\n".join(
            f"  {name}: {', '.join(c.precisions)} (default {c.default_precision}; patches "
            f"{c.default_patches})\n      {c.notes}" for name, c in TARGETS.items())
        + "\n\npatch strategies (unfold/fold rewrites, all exactly equal in fp32):\n" + "\n".join(
            f"  {s.name}: {s.doc}" for s in STRATEGIES.values())
        + "\n\nexit codes: 0 ok, 2 bad request, 3 validation failed, 4 conversion failed")
    p.add_argument("target", choices=[*TARGETS, "all"], help="what to export to")
    p.add_argument("--variant", default=None,
                   help=f"one of {', '.join(VARIANTS)}; default: the checkpoint's variant, or small without --weights")
    p.add_argument("--weights", default=None,
                   help="checkpoint (mmpretrain .pth, ml-cvnets .pt, timm, Hugging Face .safetensors/.bin, "
                        "or ours); default: calibrated synthetic weights, clearly marked as such")
    p.add_argument("--precision", default=None,
                   help="comma-separated precisions (see below); default: the target's default")
    p.add_argument("--patches", default=None, choices=list(STRATEGIES),
                   help="unfold/fold strategy; default: the one measured best for the target")
    p.add_argument("--attention", default=None, choices=["batched", "split"],
                   help="attention layout: batched (public code, 4 transposes per layer) or split "
                        "(heads as channel slices, 1 transpose per layer); default: the target's best")
    p.add_argument("--size", default="256",
                   help="input size, or a comma list for a multi-size Core ML model (e.g. 192,256,320)")
    p.add_argument("--out", default="artifacts", help="output folder (default artifacts/)")
    p.add_argument("--force", action="store_true", help="replace an existing export")
    p.add_argument("--input", dest="input_kind", default="image", choices=["image", "tensor"],
                   help="Core ML input: an image (default) or a float tensor")
    p.add_argument("--output", dest="output_kind", default="classifier", choices=["classifier", "logits"],
                   help="Core ML output: classifier with class names (default) or raw logits")
    p.add_argument("--dynamic-hw", action="store_true", help="ONNX: symbolic height/width (multiples of 64)")
    p.add_argument("--images", default=None, help="folder of your own photos for validation/calibration")
    return p


def _sizes(text: str) -> tuple[int, ...]:
    from .config import ExportConfigError

    try:
        return tuple(int(s) for s in text.split(",") if s.strip())
    except ValueError:
        raise ExportConfigError(f"--size must be integers separated by commas, got {text!r}") from None


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    from mobilevit import InputSizeError
    from mobilevit.config import UnknownVariantError
    from mobilevit.patches import UnknownPatchStrategyError

    from .config import TARGETS, ExportConfigError
    from .pipeline import ExportRequest, run_export
    from .publish import OutputError
    from .validate import ValidationError

    bad_request: tuple[type[BaseException], ...] = (
        ExportConfigError, OutputError, InputSizeError, UnknownVariantError, UnknownPatchStrategyError,
        FileNotFoundError)
    try:
        from mobilevit.checkpoints import CheckpointError

        bad_request += (CheckpointError,)
    except ImportError:
        pass
    targets = list(TARGETS) if args.target == "all" else [args.target]
    try:
        precisions = tuple(p.strip() for p in args.precision.split(",")) if args.precision else ()
        sizes = _sizes(args.size)
        written = []
        for target in targets:
            req = ExportRequest(target=target, variant=args.variant, weights=args.weights,
                                precisions=precisions if args.target != "all" else (),
                                patches=args.patches, attention=args.attention, sizes=sizes,
                                out=Path(args.out), force=args.force,
                                input_kind=args.input_kind, output_kind=args.output_kind,
                                dynamic_hw=args.dynamic_hw, images=args.images)
            written += run_export(req)
    except bad_request as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_REQUEST
    except ValidationError as e:
        print(f"error: {e}\nNothing was written.", file=sys.stderr)
        return EXIT_VALIDATION
    except Exception as e:  # conversion failures from coremltools / torch.onnx / onnx2tf
        print(f"error: conversion failed: {type(e).__name__}: {e}\nNothing was written.", file=sys.stderr)
        return EXIT_CONVERSION
    for r in written:
        print(r.artifact)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
