"""``python -m benchmarks``: latency and drift of every runtime on the same inputs.

``--quick`` (``make bench``): xx_small, threads 1 (the headline) and 2, every target and precision of
the registry (``export.config.TARGETS``), PyTorch eager, and the Hugging Face baselines.
``--full`` (``make bench-full``): all three variants, more repeats.
Writes ``benchmarks/results/bench.{json,csv,md}`` and PNG plots.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
QUICK_REPEATS, FULL_REPEATS = 30, 100


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="xx_small, 30 repeats (default)")
    mode.add_argument("--full", action="store_true", help="all variants, 100 repeats")
    p.add_argument("--variants", help="comma list of xx_small, x_small, small (default: --quick/--full; "
                   "with --weights, the checkpoint's variant)")
    p.add_argument("--targets", default=None,
                   help="comma list of pytorch and export targets (default: pytorch and every registered target)")
    p.add_argument("--precisions", default=None,
                   help="restrict precisions, e.g. fp32,fp16 (default: every precision of each target)")
    p.add_argument("--threads", default="1,2",
                   help="comma list of thread counts (default 1,2; the first is the headline)")
    p.add_argument("--repeats", type=int, default=None,
                   help=f"timed runs per row and thread count (default {QUICK_REPEATS}, --full {FULL_REPEATS})")
    p.add_argument("--seed", type=int, default=0, help="seed of the shuffled run order (recorded)")
    p.add_argument("--warmup", type=int, default=5, help="untimed runs per row before timing")
    p.add_argument("--images", default=None,
                   help="folder of your own photos for drift (default: photos from installed packages)")
    p.add_argument("--num-images", type=int, default=16, help="photos for drift (default 16)")
    p.add_argument("--weights", default=None, help="checkpoint; default calibrated synthetic weights")
    p.add_argument("--no-baseline", action="store_true", help="skip the Hugging Face as-is baseline")
    p.add_argument("--no-localize", action="store_true",
                   help="do not localise drift over tolerance (the first stage/block where it appears)")
    p.add_argument("--android-binary", type=Path, default=None,
                   help="TFLite benchmark_model binary for an attached Android device (adb): "
                        "times every .tflite row on the phone")
    p.add_argument("--android-threads", type=int, default=4, help="threads for benchmark_model on the phone")
    p.add_argument("--out", type=Path, default=RESULTS, help="results folder (default benchmarks/results)")
    p.add_argument("--stem", default="bench", help="output file name stem")
    return p


def _choices(p: argparse.ArgumentParser, flag: str, text: str, valid) -> list[str]:
    """A comma list checked against ``valid``; a bad name stops with the valid choices."""
    items = [t.strip() for t in text.split(",") if t.strip()]
    bad = [t for t in items if t not in valid]
    if bad or not items:
        p.error(f"{flag}: unknown {', '.join(bad) or '(empty)'}; choose from {', '.join(valid)}")
    return items


def _threads(p: argparse.ArgumentParser, text: str) -> list[int]:
    try:
        threads = [int(t) for t in text.split(",")]
    except ValueError:
        threads = []
    if not threads or min(threads) < 1:
        p.error(f"--threads: expected positive integers separated by commas, got {text!r}")
    return threads


def main(argv=None) -> int:
    p = parser()
    args = p.parse_args(argv)
    from export import TARGETS
    from mobilevit.config import VARIANTS

    all_precisions = sorted({x for t in TARGETS.values() for x in t.precisions})
    if args.variants:
        variants = _choices(p, "--variants", args.variants, list(VARIANTS))
    elif args.full:
        variants = list(VARIANTS)
    else:  # --quick: xx_small, or the checkpoint's own variant (None)
        variants = [None] if args.weights else ["xx_small"]
    targets = _choices(p, "--targets", args.targets or ",".join(["pytorch", *TARGETS]), ["pytorch", *TARGETS])
    keep = set(_choices(p, "--precisions", args.precisions, all_precisions)) if args.precisions else None
    threads = _threads(p, args.threads)
    if args.repeats is not None and args.repeats < 1:
        p.error("--repeats must be at least 1")
    os.environ["PATH"] = str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", "")
    import torch

    from data.photos import load_folder, photo_variants
    from data.synthetic import synthetic_model
    from export.convert import calibration_photos
    from mobilevit.preprocess import preprocess
    from mobilevit.synthetic import SYNTHETIC_ORIGIN

    from .device import android_status
    from .harness import machine_info, noisy_threads, run_matrix
    from .report import write_all

    repeats = args.repeats or (FULL_REPEATS if args.full else QUICK_REPEATS)
    precisions = {k: tuple(p for p in t.precisions if keep is None or p in keep) for k, t in TARGETS.items()}
    if args.images:
        photos = load_folder(args.images, limit=args.num_images)
    else:
        photos = photo_variants(args.num_images, 11)
    start = time.time()
    machine = machine_info()
    result = {"meta": {"created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                       "command": "python -m benchmarks " + " ".join(sys.argv[1:] if argv is None else argv),
                       "machine": machine, "threads": threads, "headline_threads": threads[0],
                       "noisy_threads": {str(t): noisy_threads(t, machine["logical_cores"]) for t in threads},
                       "seed": args.seed, "repeats": repeats,
                       "images": len(photos),
                       "weights": args.weights or SYNTHETIC_ORIGIN, "torch": torch.__version__,
                       "android": android_status(args.android_binary)},
              "variants": []}
    for variant in variants:
        if args.weights:
            from mobilevit.checkpoints import load_model

            model = load_model(args.weights, variant=variant)
        else:
            model = synthetic_model(variant)
        images = preprocess(photos, model.cfg).numpy()
        calib = calibration_photos(model.cfg, images.shape[-1])
        with tempfile.TemporaryDirectory(prefix="bench-") as work:
            res = run_matrix(model, Path(work), targets=targets, precisions=precisions, threads=threads,
                             repeats=repeats, warmup=args.warmup, images=images, calibration=calib, seed=args.seed,
                             baseline=not args.no_baseline, weights=result["meta"]["weights"],
                             localize_images=0 if args.no_localize else 4,
                             android=(args.android_binary, args.android_threads)
                             if result["meta"]["android"]["available"] else None)
        result["variants"].append(res)
    result["meta"]["seconds"] = round(time.time() - start, 1)
    paths = write_all(result, args.out, args.stem)
    print(paths["md"].read_text())
    for kind, path in paths.items():
        print(f"[bench] wrote {kind}: {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
