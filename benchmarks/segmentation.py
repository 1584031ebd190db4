"""Segmentation rows: DeepLabV3-MobileViT at 512x512 on every runtime and precision, in the classifiers' harness.

    python -m benchmarks.segmentation [--variants xx_small] [--targets pytorch,coreml,onnx,tflite,executorch]
        [--threads 1] [--repeats 30] [--num-images 8] [--weights CKPT] [--out benchmarks/results]

Artifacts come from ``export.convert_all`` through ``harness.build_entries`` (each target's default patches,
attention and rewrites; Core ML as a logits model, its class map being that network plus an argmax). Drift is
PyTorch's logits, pixel agreement and mean IoU (``export.tasks``, judged by ``SEGMENTATION_TOLERANCES``); latency
comes from the harness's shuffled, interleaved rounds. Writes ``segmentation.json`` (the numbers), ``.md`` (the
README table), ``segmentation_latency.png`` and ``segmentation_masks.png`` (one photo, PyTorch's class map and
each artifact's, side by side).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from export.config import SEGMENTATION_TOLERANCES, preload_modules
from mobilevit.atomic import write_atomic, write_text

RESULTS = Path(__file__).parent / "results"
STEM = "segmentation"
# PyTorch eager, then every registered target that offers a segmentation precision
TARGETS = ("pytorch", *dict.fromkeys(t for t, _ in SEGMENTATION_TOLERANCES))


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.segmentation", description=__doc__.split("\n\n")[0])
    p.add_argument("--variants", default="xx_small", help="comma list of xx_small, x_small, small")
    p.add_argument("--targets", default=",".join(TARGETS), help=f"comma list of {', '.join(TARGETS)}")
    p.add_argument("--threads", default="1", help="comma list of thread counts (the first is the headline)")
    p.add_argument("--repeats", type=int, default=30, help="timed runs per row and thread count")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--num-images", type=int, default=8, help="photos for drift (512x512 crops)")
    p.add_argument("--images", default=None, help="folder of your own photos (default: the bundled ones)")
    p.add_argument("--weights", default=None, help="a DeepLabV3-MobileViT checkpoint (default: synthetic weights)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=RESULTS)
    return p


def voc_palette(n: int = 256) -> np.ndarray:
    """PASCAL VOC's colour map ``[n, 3]`` uint8: class 0 black, each bit of the id spread over R, G and B."""
    out = np.zeros((n, 3), np.uint8)
    for i in range(n):
        c, rgb = i, [0, 0, 0]
        for j in range(8):
            for k in range(3):
                rgb[k] |= ((c >> k) & 1) << (7 - j)
            c >>= 3
        out[i] = rgb
    return out


def run(model, *, targets: list[str], threads: list[int], repeats: int, warmup: int, images: np.ndarray,
        calibration: np.ndarray, seed: int = 0) -> tuple[dict, dict[str, np.ndarray]]:
    """One variant: the rows (drift, latency) and each row's class map of the first photo."""
    import torch

    from export.tasks import class_maps, segmentation_precisions

    from .harness import build_entries, measure_drift, measure_latency
    from .stats import ratio_ci

    precisions = {t: segmentation_precisions(t) for t in targets if t != "pytorch"}
    start = time.time()
    maps: dict[str, np.ndarray] = {}
    with tempfile.TemporaryDirectory(prefix="bench-seg-") as work:
        entries = build_entries(model, Path(work), targets, precisions, calibration, baseline=False,
                                size=int(images.shape[-1]))
        measure_drift(entries, model, images, task="segmentation")
        for e in entries:
            if e.make_runner is not None and not e.error:
                maps[e.name] = class_maps(e.make_runner(1)(images[:1]), images.shape[2:])[0]  # [H, W]
        orders = measure_latency(entries, threads, repeats, warmup, images[:1], seed=seed)
    with torch.no_grad():
        maps["pytorch"] = class_maps(model(torch.from_numpy(images[:1])).numpy(), images.shape[2:])[0]
    rows = []
    head = str(threads[0])
    base = next((e for e in entries if e.name == "pytorch fp32"), None)
    base_samples = (base.results.get("latency", {}).get(head, {}).get("samples_ms") if base else None)
    for e in entries:
        row = {"name": e.name, "runtime": e.runtime, "target": e.target, "precision": e.precision,
               "version": e.version, "artifact": Path(e.artifact).name if e.artifact else "",
               "settings": e.settings, "latency_skip": e.latency_skip, "error": e.error, **e.results}
        samples = row.get("latency", {}).get(head, {}).get("samples_ms")
        if samples and base_samples and e.name != "pytorch fp32":  # < 1: faster than PyTorch eager
            row["vs_pytorch"] = ratio_ci(samples, base_samples, seed=seed)
        rows.append(row)
    return {"variant": model.cfg.name, "size": int(images.shape[-1]), "round_orders": orders,
            "seconds": round(time.time() - start, 1), "rows": rows}, maps


def render(result: dict) -> str:
    """The README table, from the JSON's numbers."""
    meta = result["meta"]
    head = str(meta["threads"][0])
    out = [f"Segmentation benchmark: `{meta['command']}` on {meta['created']}, {meta['machine']['cpu']} "
           f"({meta['machine']['logical_cores']} cores), DeepLabV3-MobileViT at {meta['size']}x{meta['size']}, "
           f"weights: {meta['weights']}; drift vs PyTorch fp32 on {meta['images']} real photos (class maps compared "
           f"at the input size); latency: median of {meta['repeats']} runs at {head} thread(s) [bootstrap 95% CI], "
           f"shuffled interleaved rounds (seed {meta['seed']}); {meta['seconds']:.0f} s.", ""]
    for v in result["variants"]:
        out += [f"**{v['variant']}**", "",
                f"| row | latency @{head} thr, ms [95% CI] | / PyTorch fp32 [95% CI] | pixels agreeing (worst photo) "
                "| mIoU vs PyTorch | logit cosine (worst photo) | tol |", "|---|---|---|---|---|---|---|"]
        for r in v["rows"]:
            lat = r.get("latency", {}).get(head)
            cell = (f"{lat['median_ms']:.1f} [{lat['ci95_low_ms']:.1f}, {lat['ci95_high_ms']:.1f}]" if lat
                    else (r["latency_skip"] or r["error"] or "-"))
            ratio = r.get("vs_pytorch")
            rcell = f"{ratio['value']:.2f} [{ratio['ci95_low']:.2f}, {ratio['ci95_high']:.2f}]" if ratio else "-"
            d = r.get("drift")
            if d:
                agree = f"{d['pixel_agreement']:.2%} ({d['pixel_agreement_min']:.2%})"
                miou, cos = f"{d['miou']:.4f}", (f"{d['cosine_min']:.6f}" if d["cosine_min"] is not None else "-")
            else:
                agree, miou, cos = ("reference" if r["target"] == "pytorch" else "-"), "-", "-"
            tol = {True: "ok", False: "**over**"}.get(r.get("within_tolerance"), "-")
            out.append(f"| {r['name']} | {cell} | {rcell} | {agree} | {miou} | {cos} | {tol} |")
        out.append("")
    from export.config import SEGMENTATION_TOLERANCES

    out += ["Tolerances (`SEGMENTATION_TOLERANCES`, export/config.py; logit limits do not apply to a class map):", "",
            "| target | precision | max abs / max abs(logit) | logit cosine (worst photo) | pixels agreeing "
            "(worst photo) | mIoU vs PyTorch |", "|---|---|---|---|---|---|"]
    out += [f"| {t} | {p} | {tol.max_abs_rel:g} | {tol.cosine_min:g} | {tol.pixel_min:.1%} | {tol.miou_min:g} |"
            for (t, p), tol in SEGMENTATION_TOLERANCES.items()]
    out += ["", f"![class maps](benchmarks/results/{STEM}_masks.png)"]
    return "\n".join(out) + "\n"


def plot(result: dict, photo: np.ndarray, maps: dict[str, np.ndarray], out: Path) -> dict[str, Path]:
    """The masks figure (photo, PyTorch, each artifact) and the latency chart."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    palette = voc_palette()
    names = ["pytorch", *[n for n in maps if n != "pytorch" and not n.startswith("pytorch")]]
    fig, axes = plt.subplots(1, len(names) + 1, figsize=(2.2 * (len(names) + 1), 2.6))
    axes[0].imshow(photo)
    axes[0].set_title("photo", fontsize=8)
    for ax, name in zip(axes[1:], names):
        ax.imshow(palette[maps[name] % 256])
        same = "" if name == "pytorch" else f"\n{(maps[name] == maps['pytorch']).mean():.2%} = PyTorch"
        ax.set_title(f"{name}{same}", fontsize=8)
    for ax in axes:
        ax.axis("off")
    fig.tight_layout()
    paths = {"masks": out / f"{STEM}_masks.png"}
    write_atomic(paths["masks"], lambda f: fig.savefig(f, format="png", dpi=80))
    plt.close(fig)
    head = str(result["meta"]["threads"][0])
    v = result["variants"][0]
    rows = [r for r in v["rows"] if r.get("latency", {}).get(head)]
    fig, ax = plt.subplots(figsize=(7, 0.45 * len(rows) + 1))
    med = [r["latency"][head]["median_ms"] for r in rows]
    lo = [m - r["latency"][head]["ci95_low_ms"] for m, r in zip(med, rows)]
    hi = [r["latency"][head]["ci95_high_ms"] - m for m, r in zip(med, rows)]
    ax.barh([r["name"] for r in rows], med, xerr=[lo, hi], color="#4c72b0")
    ax.set_xlabel(f"ms per 512x512 image, {head} thread(s) (median, 95% CI)")
    ax.set_title(f"DeepLabV3-MobileViT {v['variant']}")
    ax.invert_yaxis()
    fig.tight_layout()
    paths["latency"] = out / f"{STEM}_latency.png"
    write_atomic(paths["latency"], lambda f: fig.savefig(f, format="png", dpi=80))
    plt.close(fig)
    return paths


def write(result: dict, photo: np.ndarray, maps: dict[str, np.ndarray], out: Path) -> dict[str, Path]:
    """JSON, markdown and the two figures, each written whole (temporary file, then rename)."""
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for suffix, text in (("json", json.dumps(result, indent=1) + "\n"), ("md", render(result))):
        paths[suffix] = write_text(out / f"{STEM}.{suffix}", text)
    return {**paths, **plot(result, photo, maps, out)}


def main(argv=None) -> int:
    p = parser()
    args = p.parse_args(argv)
    from mobilevit.config import VARIANTS

    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    bad = [v for v in variants if v not in VARIANTS] + [t for t in targets if t not in TARGETS]
    if bad or not variants or not targets:
        p.error(f"unknown {', '.join(bad) or '(empty)'}; variants: {', '.join(VARIANTS)}; "
                f"targets: {', '.join(TARGETS)}")
    threads = [int(t) for t in args.threads.split(",")]
    from export.quiet import configure

    configure(preload=preload_modules(targets))
    import torch

    from data.photos import load_folder, photo_variants
    from data.synthetic import synthetic_segmentation_model
    from export.convert import calibration_photos
    from mobilevit.preprocess import preprocess, resize_and_crop
    from mobilevit.synthetic import SYNTHETIC_ORIGIN

    from .harness import machine_info

    photos = load_folder(args.images, limit=args.num_images) if args.images else photo_variants(args.num_images, 11)
    start = time.time()
    result = {"meta": {"created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                       "command": ("python -m benchmarks.segmentation " + " ".join(sys.argv[1:] if argv is None
                                                                                    else argv)).strip(),
                       "machine": machine_info(), "threads": threads, "repeats": args.repeats, "seed": args.seed,
                       "images": len(photos), "weights": args.weights or SYNTHETIC_ORIGIN,
                       "torch": torch.__version__},
              "variants": []}
    maps: dict[str, np.ndarray] = {}
    for variant in variants:
        if args.weights:
            from mobilevit.checkpoints import load_model

            model = load_model(args.weights, variant=variant, task="segmentation")
        else:
            model = synthetic_segmentation_model(variant, size=256)
        size = model.cfg.input_size
        images = preprocess(photos, model.cfg, size).numpy()
        calib = calibration_photos(model.cfg, size)
        print(f"[bench] segmentation {variant} at {size}x{size}: {', '.join(targets)} ...", file=sys.stderr)
        res, variant_maps = run(model, targets=targets, threads=threads, repeats=args.repeats, warmup=args.warmup,
                                images=images, calibration=calib, seed=args.seed)
        result["variants"].append(res)
        maps = maps or variant_maps  # the figure shows the first variant
    result["meta"]["size"] = result["variants"][0]["size"]
    result["meta"]["seconds"] = round(time.time() - start, 1)
    photo = resize_and_crop(photos[0], result["meta"]["size"], result["meta"]["size"])
    paths = write(result, photo, maps, args.out)
    print(paths["md"].read_text())
    for kind, path in paths.items():
        print(f"[bench] wrote {kind}: {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
