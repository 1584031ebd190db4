"""``python -m benchmarks.accuracy`` (``make bench-accuracy``): real accuracy drift of every artifact.

Pretrained ImageNet weights cannot be downloaded here, so accuracy on synthetic weights would mean
nothing. Instead: fine-tune MobileViT on a real labelled dataset (``mobilevit.train``; reused if
``artifacts/finetune/model.pt`` exists), export it to every target x precision through the one
conversion path the CLI uses (``export.convert_all``), and report validation top-1 of PyTorch and of each artifact, the
difference, and how many images changed their prediction. Artifacts that fail export validation
are still measured here (an int8 model's accuracy is reported even when it drops).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from export import TARGETS

RESULTS = Path(__file__).parent / "results"
MATRIX = {name: t.precisions for name, t in TARGETS.items()}  # every precision of every registered target


def _say(msg):
    print(f"[accuracy] {msg}", file=sys.stderr, flush=True)


def export_all(model, size: int, calib: np.ndarray, work: Path) -> list[tuple[str, str, Path | str]]:
    """(target, precision, artifact path or 'error: ...') for the whole matrix."""
    from export import convert_all, target_config, with_target_defaults

    out = []
    for target, precisions in MATRIX.items():
        _say(f"{target} {', '.join(precisions)} ...")
        try:
            made = convert_all(with_target_defaults(model, target), target, precisions, work / target, size=size,
                               calibration=calib, **target_config(target).logits_options)
            out += [(target, p, path) for p, path in made.items()]
        except Exception as e:
            out += [(target, p, f"error: {e}") for p in precisions]
    return out


def run(checkpoint: Path, out: Path, train_if_missing: bool = True, limit: int | None = None) -> dict:
    from export.runners import make_runner
    from mobilevit.checkpoints import load_checkpoint, load_model
    from mobilevit.datasets import load
    from mobilevit.train import TrainConfig, train

    if not checkpoint.exists():
        if not train_if_missing:
            raise FileNotFoundError(f"{checkpoint} does not exist: run `make finetune` first")
        _say(f"{checkpoint} not found: fine-tuning first (make finetune) ...")
        train(TrainConfig(out=str(checkpoint.parent)))
    ckpt = load_checkpoint(checkpoint)
    model = load_model(checkpoint)
    extra = torch.load(checkpoint, map_location="cpu", weights_only=True).get("extra", {})
    size = int(extra.get("eval_size", 64))
    cfg = extra.get("train_config", {})
    data = load(cfg.get("dataset", "digits"), size, seed=int(cfg.get("seed", 0)))
    x = data.val.images.numpy()
    y = data.val.labels.numpy()
    if limit:
        x, y = x[:limit], y[:limit]
    calib = data.train.images[:64].numpy()
    with torch.no_grad():
        torch_pred = np.concatenate([model(torch.from_numpy(x[i:i + 128])).argmax(1).numpy()
                                     for i in range(0, len(x), 128)])
    torch_top1 = float((torch_pred == y).mean())
    rows = [{"target": "pytorch", "precision": "fp32", "runtime": f"torch {torch.__version__}",
             "top1": torch_top1, "delta": 0.0, "changed": 0, "error": ""}]
    with tempfile.TemporaryDirectory(prefix="acc-") as tmp:
        for target, precision, path in export_all(model, size, calib, Path(tmp)):
            row = {"target": target, "precision": precision, "runtime": "", "top1": None, "delta": None,
                   "changed": None, "error": ""}
            if isinstance(path, str):
                row["error"] = path
            else:
                try:
                    runner = make_runner(path, threads=2)
                    row["runtime"] = f"{runner.runtime} {runner.version}"
                    pred = np.concatenate([runner(x[i:i + 64]).argmax(1) for i in range(0, len(x), 64)])
                    row.update(top1=float((pred == y).mean()), changed=int((pred != torch_pred).sum()))
                    row["delta"] = row["top1"] - torch_top1
                except Exception as e:
                    row["error"] = f"{type(e).__name__}: {e}"
            _say(f"{target} {precision}: top-1 {row['top1']} ({row['error'] or 'ok'})")
            rows.append(row)
    result = {"meta": {"created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                       "checkpoint": str(checkpoint), "checkpoint_sha256": ckpt.sha256, "origin": ckpt.origin,
                       "variant": ckpt.variant, "dataset": data.name, "val_images": int(len(y)),
                       "size": size},
              "rows": rows}
    write(result, out)
    return result


def render(result: dict) -> str:
    m = result["meta"]
    lines = [f"Accuracy drift: MobileViT {m['variant']} {m['origin']}, {m['val_images']} validation images "
             f"at {m['size']}x{m['size']} ({m['created']}).", "",
             "| target | precision | runtime | top-1 | vs PyTorch | predictions changed |",
             "|---|---|---|---|---|---|"]
    for r in result["rows"]:
        if r["top1"] is None:
            lines.append(f"| {r['target']} | {r['precision']} | {r['runtime']} | — | — | {r['error'][:80]} |")
            continue
        lines.append(f"| {r['target']} | {r['precision']} | {r['runtime']} | {r['top1']:.2%} | "
                     f"{r['delta'] * 100:+.2f} pt | {r['changed']} |")
    return "\n".join(lines) + "\n"


def write(result: dict, out: Path, stem: str = "accuracy") -> None:
    import csv

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.json").write_text(json.dumps(result, indent=1) + "\n")
    with open(out / f"{stem}.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(result["rows"][0]))
        w.writeheader()
        w.writerows(result["rows"])
    (out / f"{stem}.md").write_text(render(result))
    rows = [r for r in result["rows"] if r["top1"] is not None]
    fig, ax = plt.subplots(figsize=(8, 0.35 * len(rows) + 1.5))
    ax.barh([f"{r['target']} {r['precision']}" for r in rows], [100 * r["top1"] for r in rows],
            color="#1f77b4")
    ax.invert_yaxis()
    lo = min(100 * r["top1"] for r in rows)
    ax.set_xlim(max(0, lo - 5), 100)
    ax.set_xlabel("validation top-1, %")
    ax.set_title(f"MobileViT {result['meta']['variant']} fine-tuned on {result['meta']['dataset']}: "
                 "accuracy per artifact")
    fig.tight_layout()
    fig.savefig(out / f"{stem}.png", dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    import os

    os.environ["PATH"] = str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", "")
    p = argparse.ArgumentParser(prog="python -m benchmarks.accuracy", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", type=Path, default=Path("artifacts/finetune/model.pt"))
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--limit", type=int, default=None, help="evaluate only the first N validation images")
    a = p.parse_args(argv)
    result = run(a.checkpoint, a.out, limit=a.limit)
    print(render(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
