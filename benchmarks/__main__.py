"""``python -m benchmarks``: latency and drift of every runtime on the same inputs.

``--quick`` (``make bench``): xx_small, threads 1 and 2, every runtime and precision, HF baseline.
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
ALL_PRECISIONS = {"onnx": ("fp32", "fp16", "int8", "int8_dynamic"),
                  "tflite": ("fp32", "fp16", "int8_dynamic", "int8"),
                  "coreml": ("fp32", "fp16")}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="xx_small, 30 repeats (default)")
    mode.add_argument("--full", action="store_true", help="all variants, 100 repeats")
    p.add_argument("--variants", help="comma list (xx_small,x_small,small)")
    p.add_argument("--runtimes", default="torch,onnxruntime,litert,coreml",
                   help="comma list of torch, onnxruntime, litert, coreml")
    p.add_argument("--precisions", default=None,
                   help="restrict precisions, e.g. fp32,fp16 (default: every precision of each target)")
    p.add_argument("--threads", default="1,2", help="comma list of thread counts (default 1,2)")
    p.add_argument("--repeats", type=int, default=None, help="timed runs per row and thread count")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--images", default=None, help="folder of your own photos for drift (default: bundled photos)")
    p.add_argument("--num-images", type=int, default=16)
    p.add_argument("--weights", default=None, help="checkpoint; default calibrated synthetic weights")
    p.add_argument("--no-baseline", action="store_true", help="skip the Hugging Face as-is baseline")
    p.add_argument("--localize-tflite", action="store_true",
                   help="also localise TFLite drift (one onnx2tf conversion per stage, ~1 min each)")
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--stem", default="bench", help="output file name stem")
    return p


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    os.environ["PATH"] = str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", "")
    import torch

    from export.config import TOLERANCES
    from mobilevit.images import load_folder, photo_variants
    from mobilevit.preprocess import preprocess
    from mobilevit.synthetic import SYNTHETIC_ORIGIN, synthetic_model

    from .harness import RUNTIME_TARGET, machine_info, run_matrix
    from .localize import localize
    from .report import write_all

    variants = (args.variants or ("xx_small,x_small,small" if args.full else "xx_small")).split(",")
    repeats = args.repeats or (100 if args.full else 30)
    threads = [int(t) for t in args.threads.split(",")]
    runtimes = set(args.runtimes.split(","))
    keep = set(args.precisions.split(",")) if args.precisions else None
    precisions = {k: tuple(p for p in v if keep is None or p in keep) for k, v in ALL_PRECISIONS.items()}
    photos = load_folder(args.images, limit=args.num_images) if args.images else photo_variants(args.num_images, 11)
    calib_photos = photo_variants(32, seed=7)
    start = time.time()
    result = {"meta": {"created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "machine": machine_info(),
                       "threads": threads, "repeats": repeats, "images": len(photos),
                       "weights": args.weights or SYNTHETIC_ORIGIN, "torch": torch.__version__},
              "variants": []}
    for variant in variants:
        if args.weights:
            from mobilevit.checkpoints import load_model

            model = load_model(args.weights, variant=variant)
        else:
            model = synthetic_model(variant)
        images = preprocess(photos, model.cfg).numpy()
        calib = preprocess(calib_photos, model.cfg).numpy()
        with tempfile.TemporaryDirectory(prefix="bench-") as work:
            res = run_matrix(model, Path(work), runtimes=runtimes, precisions=precisions, threads=threads,
                             repeats=repeats, warmup=args.warmup, images=images, calibration=calib,
                             baseline=not args.no_baseline, weights=result["meta"]["weights"])
        for row in res["rows"]:
            target = RUNTIME_TARGET.get(row["runtime"])
            if row.get("within_tolerance") is False and row["source"] == "ours" and (
                    target != "tflite" or args.localize_tflite):
                print(f"[bench] {row['name']} exceeds its tolerance: localising ...", file=sys.stderr)
                row["localization"] = localize(model, target, row["precision"], TOLERANCES[(target, row["precision"])],
                                               images[:4], calib)
                print(f"[bench] {row['name']}: {row['localization']['message']}", file=sys.stderr)
        result["variants"].append(res)
    result["meta"]["seconds"] = round(time.time() - start, 1)
    paths = write_all(result, args.out, args.stem)
    print(paths["md"].read_text())
    for kind, path in paths.items():
        print(f"[bench] wrote {kind}: {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
