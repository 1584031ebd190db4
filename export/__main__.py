"""``python -m export {coreml,onnx,tflite,all}``: export MobileViT, validate it, publish it atomically.

Exit codes: 0 exported and validated; 2 bad request (unknown name, bad size, bad checkpoint,
unwritable, existing or full output; nothing written); 3 validation failed; 4 conversion failed. After
a 3 or a 4, the last lines say exactly which artifacts were published (those that passed) and
which were not.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

EXIT_OK, EXIT_BAD_REQUEST, EXIT_VALIDATION, EXIT_CONVERSION = 0, 2, 3, 4


def parser() -> argparse.ArgumentParser:
    from mobilevit import DEFAULT_SIZE, STRATEGIES, VARIANTS
    from mobilevit.config import SEGMENTATION_SIZE
    from mobilevit.layers import KINDS
    from mobilevit.model import ATTENTION_LAYOUTS
    from mobilevit.rewrites import REWRITES

    from .config import TARGETS
    from .int8search import OBJECTIVES
    from .tasks import TASKS

    p = argparse.ArgumentParser(
        prog="python -m export", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Export MobileViT to Core ML, ONNX, TFLite or ExecuTorch; every artifact is run in its "
                    "runtime on real photographs and compared with PyTorch before it is written.",
        epilog="targets and precisions:\n" + "\n".join(
            f"  {name}: {', '.join(c.precisions)} (default {c.default_precision}; patches "
            f"{c.default_patches}, attention {c.default_attention}"
            f"{'; rewrites ' + ', '.join(c.rewrites) if c.rewrites else ''})\n      {c.notes}"
            for name, c in TARGETS.items())
        + "\n\npatch strategies (unfold/fold rewrites, all exactly equal in fp32):\n" + "\n".join(
            f"  {s.name}: {s.doc}" for s in STRATEGIES.values())
        + "\n\nmodel rewrites (equal to the reference within fp32 rounding):\n" + "\n".join(
            f"  {r.name}: {r.summary}" for r in REWRITES.values())
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
    p.add_argument("--attention", default=None, choices=list(ATTENTION_LAYOUTS),
                   help="attention layout: batched (public code, 4 transposes per layer), split "
                        "(heads as channel slices, 1 transpose per layer) or bmm (heads in the batch of "
                        "3-D batched matmuls); default: the target's best")
    p.add_argument("--size", default="",
                   help=f"input size (default {DEFAULT_SIZE}; {SEGMENTATION_SIZE} for segmentation), or a comma list "
                        "for a multi-size Core ML classifier (e.g. 192,256,320)")
    p.add_argument("--out", default="artifacts", help="output folder (default artifacts/)")
    p.add_argument("--force", action="store_true", help="replace an existing export")
    p.add_argument("--input", dest="input_kind", default="image", choices=["image", "tensor"],
                   help="Core ML input: an image (default) or a float tensor")
    p.add_argument("--output", dest="output_kind", default=None, choices=["classifier", "logits", "classmap"],
                   help="classification: Core ML classifier with class names (default) or raw logits; "
                        "segmentation, any target: logits at 1/16 of the input (default except Core ML) or classmap, "
                        "the class index of every input pixel (Core ML's default)")
    p.add_argument("--task", default="classification", choices=list(TASKS),
                   help="classification (ImageNet MobileViT, default) or segmentation (DeepLabV3-MobileViT, "
                        "PASCAL VOC's 21 classes, 512x512; Hugging Face and ml-cvnets checkpoints)")
    p.add_argument("--dynamic-hw", action="store_true", help="ONNX: symbolic height/width (multiples of 64)")
    p.add_argument("--images", default=None, help="folder of your own photos for validation/calibration")
    p.add_argument("--verbose", action="store_true",
                   help="show the converters' and runtimes' own output (warnings, logs, progress bars)")
    p.add_argument("--option", dest="options", action="append", default=[], metavar="KEY=VALUE",
                   help="one of the target's own options (its options dataclass; repeatable), e.g. "
                        "--option exporter=as-is; an unknown key is refused naming the valid ones")
    p.add_argument("--float-kinds", default=None,
                   help="int8 precisions: comma-separated layer kinds to keep in float, replacing the target's "
                        f"measured recipe ('' = none); kinds: {', '.join(KINDS)}")
    p.add_argument("--int8-budget", default=None, metavar="cosine=C|top1=P",
                   help="int8 (onnx, tflite, executorch) and w8a8 (coreml): choose the layers kept in float for this "
                        "checkpoint by measurement, the most int8 that keeps mean logit cosine >= C against fp32 on "
                        "held-out photos (e.g. cosine=0.999), "
                        "or top-1 at most P points below fp32 on held-out labelled photos of --images' class folders "
                        "(e.g. top1=0.5); the manifest records the layers and figures")
    p.add_argument("--int8-objective", default=None, choices=OBJECTIVES,
                   help="with --int8-budget: speed = the fastest set in the target's runtime on this machine "
                        "(measured; the default where the runtime runs here); macs = the most multiply-accumulates "
                        "in int8, for a device other than this machine (a phone's NPU or DSP), the same set on every "
                        "machine (the default for Core ML off macOS)")
    return p


def _sizes(text: str) -> tuple[int, ...]:
    from .errors import ExportConfigError

    try:
        return tuple(int(s) for s in text.split(",") if s.strip())
    except ValueError:
        raise ExportConfigError(f"--size must be integers separated by commas, got {text!r}") from None


def _kinds(text: str | None) -> tuple[str, ...] | None:
    if text is None:
        return None
    from mobilevit.layers import UnknownKindError, check_kinds

    from .errors import ExportConfigError

    try:
        return check_kinds(k.strip() for k in text.split(",") if k.strip())
    except UnknownKindError as e:
        raise ExportConfigError(f"--float-kinds: {e}") from None


def summary(results) -> list[str]:
    """A table of what was written where, with each artifact's worst-case validation figures."""
    if not results:
        return []
    lines = ["summary: | target | precision | worst cosine | agreement with PyTorch | written to |"]
    for r in results:
        sizes = list(r.manifest["validation"]["by_size"].values())
        cosines = [d["cosine_min"] for d in sizes if d.get("cosine_min") is not None]
        cosine = f"{min(cosines):.6f}" if cosines else "-"  # a class map has no logits
        if r.manifest.get("task") == "segmentation":
            agree = (f"pixels {min(d['pixel_agreement'] for d in sizes):.2%}, "
                     f"mIoU {min(d['miou'] for d in sizes):.4f}")
        else:
            agree = f"top-1 {min(d['top1_agreement'] for d in sizes):.0%}"
        lines.append(f"summary: | {r.manifest['target']} | {r.manifest['precision']} | {cosine} | {agree} "
                     f"| {r.folder} |")
    return lines


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    from .config import TARGETS, preload_modules
    from .quiet import configure

    # heavy modules of the targets asked for, imported once up front with their import-time noise silenced
    configure(args.verbose, preload_modules(list(TARGETS) if args.target == "all" else [args.target]))
    from data.datasets import DatasetError
    from mobilevit import InputSizeError
    from mobilevit.checkpoints import CheckpointError
    from mobilevit.config import UnknownVariantError
    from mobilevit.patches import UnknownPatchStrategyError

    from .convert import parse_options
    from .errors import ConversionError, ExportConfigError, OutputError, ValidationError
    from .pipeline import ExportRequest, resolve, run_export
    from .request import destination

    bad_request = (ExportConfigError, OutputError, InputSizeError, UnknownVariantError, UnknownPatchStrategyError,
                   CheckpointError, FileNotFoundError, DatasetError)
    targets = list(TARGETS) if args.target == "all" else [args.target]
    try:  # every request is resolved before any work, so a bad one writes nothing
        precisions = tuple(p.strip() for p in args.precision.split(",")) if args.precision else ()
        sizes = _sizes(args.size)
        requests = [resolve(ExportRequest(
            target=target, variant=args.variant, weights=args.weights,
            precisions=precisions if args.target != "all" else (), patches=args.patches,
            attention=args.attention, sizes=sizes, out=Path(args.out), force=args.force,
            input_kind=args.input_kind if "input_kind" in TARGETS[target].request_fields else "image",
            output_kind=(args.output_kind if "output_kind" in TARGETS[target].request_fields
                         or args.task == "segmentation" else None),
            task=args.task,
            dynamic_hw=args.dynamic_hw, images=args.images,
            float_kinds=_kinds(args.float_kinds), int8_budget=args.int8_budget,
            int8_objective=args.int8_objective,
            options=parse_options(target, args.options)))
            for target in targets]
    except bad_request as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_REQUEST
    written: list[str] = []
    results = []
    missing: list[str] = []
    errors: list[tuple[int, str]] = []
    for req in requests:
        done: list[str] = []
        try:
            made = run_export(req)
            results += made
            done = [str(r.artifact) for r in made]
        except bad_request as e:
            errors.append((EXIT_BAD_REQUEST, f"{req.target}: {e}"))
        except ValidationError as e:
            done = list(e.published)
            errors.append((EXIT_VALIDATION, str(e)))
        except ConversionError as e:
            errors.append((EXIT_CONVERSION, f"conversion failed: {e}"))
        except Exception as e:  # an unexpected failure inside a converter or runtime
            errors.append((EXIT_CONVERSION, f"conversion failed: {type(e).__name__}: {e}"))
        written += done
        folders = {str(Path(p).parent) for p in done}
        missing += [f"{req.target} {p}" for p in req.precisions if str(destination(req, p)) not in folders]
    for _, message in errors:
        print(f"error: {message}", file=sys.stderr)
    if errors:
        if written:
            print("Published (passed validation): " + ", ".join(written), file=sys.stderr)
            print("Not published: " + ", ".join(missing), file=sys.stderr)
        else:
            print("Nothing was written.", file=sys.stderr)
    for line in summary(results):
        print(f"[export] {line}", file=sys.stderr)
    for path in written:
        print(path)
    return max(code for code, _ in errors) if errors else EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
