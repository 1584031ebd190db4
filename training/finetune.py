"""Fine-tune MobileViT on a labelled dataset with the paper's multi-scale sampler.

``python -m training`` (``make finetune``) trains xx_small from scratch on scikit-learn's
handwritten digits at 64/96/128 px and writes ``artifacts/finetune/model.pt`` (our checkpoint
format, with the class names) and ``train_state.pt`` (optimizer, schedule, epoch) for ``--resume``.
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from data.datasets import DatasetError, LabelledData, Split, load
from mobilevit.checkpoints import load_checkpoint, save_checkpoint
from mobilevit.config import get_config
from mobilevit.model import MobileViT
from mobilevit.synthetic import recompute_batchnorm

from .sampler import MultiScaleSampler


@dataclass
class TrainConfig:
    variant: str = "xx_small"
    dataset: str = "digits"
    epochs: int = 12
    sizes: tuple[int, ...] = (64, 96, 128)
    base_size: int = 64
    base_batch: int = 48
    lr: float = 2e-3
    weight_decay: float = 0.01
    warmup_epochs: float = 1.0
    label_smoothing: float = 0.1
    eval_size: int = 64
    seed: int = 0
    threads: int = 2
    out: str = "artifacts/finetune"
    weights: str | None = None
    limit: int | None = None  # use only the first N training samples (quick tests)


def _schedule(step: int, total: int, warmup: int) -> float:
    """Linear warm-up, then cosine decay to 1% of the peak learning rate."""
    if step < warmup:
        return (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * t))


def build_model(cfg: TrainConfig, num_classes: int) -> MobileViT:
    """From scratch, or from a checkpoint whose classifier head is replaced when classes differ."""
    model = MobileViT(get_config(cfg.variant, num_classes=num_classes))
    if cfg.weights:
        ckpt = load_checkpoint(cfg.weights, variant=cfg.variant)
        state = {k: v for k, v in ckpt.state_dict.items() if not (k.startswith("head.") and
                                                                  ckpt.num_classes != num_classes)}
        model.load_state_dict(state, strict=False)
    return model


def recalibrate(model: MobileViT, split: Split, size: int, limit: int = 1024) -> MobileViT:
    """Precise BatchNorm statistics at the evaluation size (see ``recompute_batchnorm``)."""
    x = split.images[:limit]
    if x.shape[-1] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    return recompute_batchnorm(model, x)


@torch.no_grad()
def evaluate(model: MobileViT, split: Split, size: int, batch: int = 128) -> tuple[float, torch.Tensor]:
    """Top-1 accuracy and predictions at ``size``."""
    model.eval()
    preds = []
    for i in range(0, len(split.labels), batch):
        x = split.images[i:i + batch]
        if x.shape[-1] != size:
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
        preds.append(model(x).argmax(1))
    preds = torch.cat(preds)
    return (preds == split.labels).float().mean().item(), preds


def _augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Light augmentation: random translation by up to 1/8 of the side (pad + crop)."""
    s = x.shape[-1]
    pad = max(1, s // 8)
    x = F.pad(x, (pad, pad, pad, pad))
    dy, dx = torch.randint(0, 2 * pad + 1, (2,), generator=gen).tolist()
    return x[..., dy:dy + s, dx:dx + s]


def train(cfg: TrainConfig, resume: bool = False, data: LabelledData | None = None, progress: bool = True) -> dict:
    """Train; returns a summary (accuracy, time, paths)."""
    torch.manual_seed(cfg.seed)
    torch.set_num_threads(cfg.threads)
    data = data or load(cfg.dataset, max(cfg.sizes), seed=cfg.seed)
    train_split = data.train
    if cfg.limit is not None:
        train_split = Split(data.train.images[:cfg.limit], data.train.labels[:cfg.limit])
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    model = build_model(cfg, len(data.class_names))
    sampler = MultiScaleSampler(len(train_split.labels), cfg.sizes, cfg.base_size, cfg.base_batch, cfg.seed)
    steps_per_epoch = math.ceil(len(train_split.labels) / sampler.batch_size(max(cfg.sizes))) or 1
    total = cfg.epochs * steps_per_epoch
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: _schedule(s, total, int(cfg.warmup_epochs * steps_per_epoch)))
    start_epoch, history = 0, []
    state_path = out / "train_state.pt"
    if resume:
        if not state_path.exists():
            raise FileNotFoundError(f"nothing to resume: {state_path} does not exist")
        state = torch.load(state_path, map_location="cpu", weights_only=True)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        start_epoch, history = state["epoch"], state["history"]
    gen = torch.Generator().manual_seed(cfg.seed)
    t0 = time.time()
    from tqdm import tqdm

    for epoch in range(start_epoch, cfg.epochs):
        model.train()
        sampler.set_epoch(epoch)
        gen.manual_seed(cfg.seed * 1000 + epoch)
        seen = correct = 0
        loss_sum = 0.0
        bar = tqdm(list(sampler), desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=not progress, leave=False,
                   file=sys.stderr)
        for size, idx in bar:
            x, y = train_split.images[idx], train_split.labels[idx]
            if x.shape[-1] != size:
                x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
            x = _augment(x, gen)
            logits = model(x)
            loss = F.cross_entropy(logits, y, label_smoothing=cfg.label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            seen += len(y)
            correct += (logits.argmax(1) == y).sum().item()
            loss_sum += loss.item() * len(y)
            bar.set_postfix(loss=f"{loss_sum / seen:.3f}", acc=f"{correct / seen:.1%}", size=size)
        val_acc, _ = evaluate(recalibrate(model, train_split, cfg.eval_size), data.val, cfg.eval_size)
        history.append({"epoch": epoch + 1, "train_loss": loss_sum / seen, "train_acc": correct / seen,
                        "val_top1": val_acc, "seconds": round(time.time() - t0, 1)})
        if progress:
            print(f"epoch {epoch + 1}/{cfg.epochs}: loss {loss_sum / seen:.3f}, train {correct / seen:.1%}, "
                  f"val top-1 {val_acc:.1%} ({time.time() - t0:.0f} s)", file=sys.stderr, flush=True)
        torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                    "epoch": epoch + 1, "history": history, "config": asdict(cfg)}, state_path)
    if start_epoch < cfg.epochs:  # the last epoch recalibrated and evaluated the model as it is now
        val_acc = history[-1]["val_top1"]
    else:  # resumed with no epoch left to train
        val_acc, _ = evaluate(recalibrate(model, train_split, cfg.eval_size), data.val, cfg.eval_size)
    ckpt = save_checkpoint(model, out / "model.pt", class_names=data.class_names,
                           origin=f"fine-tuned on {data.name} ({cfg.variant}, {cfg.epochs} epochs)",
                           extra={"val_top1": val_acc, "eval_size": cfg.eval_size, "history": history,
                                  "train_config": {k: v for k, v in asdict(cfg).items() if k != "weights"}})
    return {"val_top1": val_acc, "seconds": round(time.time() - t0, 1), "checkpoint": str(ckpt),
            "history": history, "val_images": len(data.val.labels), "train_images": len(train_split.labels)}


def main(argv=None) -> int:
    d = TrainConfig()
    p = argparse.ArgumentParser(prog="python -m training", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variant", default=d.variant)
    p.add_argument("--dataset", default=d.dataset, help="'digits' (built in) or a folder root/class_name/*.jpg")
    p.add_argument("--epochs", type=int, default=d.epochs)
    p.add_argument("--sizes", default=",".join(map(str, d.sizes)), help="multi-scale resolutions (multiples of 32)")
    p.add_argument("--base-size", type=int, default=d.base_size)
    p.add_argument("--batch-size", type=int, default=d.base_batch, help="batch size at --base-size")
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--eval-size", type=int, default=d.eval_size)
    p.add_argument("--out", default=d.out)
    p.add_argument("--weights", default=None, help="start from this checkpoint (any supported format)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/train_state.pt")
    p.add_argument("--seed", type=int, default=d.seed)
    a = p.parse_args(argv)
    sizes = tuple(int(s) for s in a.sizes.split(","))
    bad = [s for s in sizes + (a.eval_size,) if s % 32]
    if bad:
        print(f"error: sizes {bad} are not multiples of 32", file=sys.stderr)
        return 2
    cfg = TrainConfig(variant=a.variant, dataset=a.dataset, epochs=a.epochs, sizes=sizes, base_size=a.base_size,
                      base_batch=a.batch_size, lr=a.lr, eval_size=a.eval_size, seed=a.seed, out=a.out,
                      weights=a.weights)
    try:
        summary = train(cfg, resume=a.resume)
    except (DatasetError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"validation top-1 {summary['val_top1']:.2%} on {summary['val_images']} images after "
          f"{summary['seconds']:.0f} s; checkpoint: {summary['checkpoint']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
