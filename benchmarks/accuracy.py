"""``python -m benchmarks.accuracy``: what top-1 each exported artifact keeps, compared with PyTorch.

Your checkpoint on your labelled images::

    python -m benchmarks.accuracy --weights mobilevit-small.pth --images imagenet/val \\
        [--labels FILE] [--targets coreml,onnx,tflite] [--precisions fp32,fp16] [--limit N] [--batch B] [--out DIR]

(``make bench-accuracy WEIGHTS=... IMAGES=...``). The checkpoint may be in any format
:mod:`mobilevit.checkpoints` reads; the folder's labels come from its layout (:mod:`data.folders`:
ImageNet synset folders, class-name folders, or a flat folder with ``--labels``). PyTorch fp32 and
every requested target x precision, exported through the one conversion path (``export.convert_all``),
classify every image with the checkpoint's own preprocessing. Per artifact: top-1 / top-5, the change of
top-1 against PyTorch with a paired bootstrap 95% interval, top-1 agreement with PyTorch, the
predictions that flipped right -> wrong and wrong -> right, and the classes that lost most.

Images stream from disk one batch at a time, so memory does not grow with the folder. Each artifact's
top-5 predictions go to ``OUT/predictions/<artifact>.npy`` as it runs (saved every few batches and when
it finishes); a rerun with the same checkpoint, folder and options resumes where it stopped. Results:
``OUT/accuracy.{json,csv,md,png}``.

Without ``--weights`` it is the demo (``make bench-accuracy``): MobileViT fine-tuned on scikit-learn's
handwritten digits (``python -m training``, reused if ``artifacts/finetune/model.pt`` exists), the whole
target x precision matrix, results in ``benchmarks/results/accuracy.*`` (the README's table).
Artifacts that fail export validation are still measured (an int8 model's accuracy is reported even
when it drops).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from export import TARGETS
from mobilevit.atomic import write_atomic
from mobilevit.threads import torch_threads

from .harness import EXIT_BAD_INPUT
from .predictions import SAVE_EVERY, Pass, Predictions, load_fn, timing, top_k
from .stats import paired_delta_ci, proportion_ci

RESULTS = Path(__file__).parent / "results"
DEFAULT_OUT = Path("artifacts/accuracy")  # a user run's outputs (the demo writes RESULTS)
MATRIX = {name: t.precisions for name, t in TARGETS.items()}  # every precision of every registered target
CLASSES_LISTED = 5  # classes that lost most, per artifact
FLIPS_LISTED = 20  # file names of right -> wrong flips kept per artifact in the JSON
STATE = "run.json"  # OUT/predictions/run.json: what the saved predictions are of, for resuming


class AccuracyConfigError(ValueError):
    """Options that cannot be honoured (an unknown target or precision, an output folder in use)."""


def _say(msg):
    print(f"[accuracy] {msg}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Artifact:
    target: str  # "pytorch" or a registered target
    precision: str

    @property
    def name(self) -> str:
        return f"{self.target}_{self.precision}"


PYTORCH = Artifact("pytorch", "fp32")


def plan(targets: list[str] | None = None, precisions: list[str] | None = None) -> list[Artifact]:
    """PyTorch first, then every requested target x precision the target offers (registry order)."""
    targets = list(MATRIX) if targets is None else targets
    unknown = [t for t in targets if t not in MATRIX]
    if unknown:
        raise AccuracyConfigError(f"unknown target(s) {', '.join(unknown)}: choose from {', '.join(MATRIX)}")
    if precisions is not None:
        offered = {p for t in targets for p in MATRIX[t]}
        missing = [p for p in precisions if p not in offered]
        if missing:
            raise AccuracyConfigError(
                f"no requested target offers {', '.join(missing)}: "
                + "; ".join(f"{t}: {', '.join(MATRIX[t])}" for t in targets))
    return [PYTORCH] + [Artifact(t, p) for t in targets for p in MATRIX[t] if precisions is None or p in precisions]


# ------------------------------------------------------------------------------------ metrics
def score(pred: np.ndarray, reference: np.ndarray, labels: np.ndarray, class_names: list[str],
          names: list[str] | None = None, resamples: int = 2000, seed: int = 0) -> dict:
    """Accuracy figures of ``pred`` (``[N, k]`` top-k, -1 rows: not scored) against ``labels`` and against
    the ``reference`` predictions (PyTorch's) on the same images."""
    ok = (pred[:, 0] >= 0) & (reference[:, 0] >= 0)
    p, r, y = pred[ok], reference[ok], labels[ok]
    n = int(ok.sum())
    if n == 0:
        raise ValueError("no image was scored")
    right, ref_right = p[:, 0] == y, r[:, 0] == y
    lost, gained = right < ref_right, right > ref_right  # right -> wrong, wrong -> right against PyTorch
    top5 = (p == y[:, None]).any(1)
    ref_top5 = (r == y[:, None]).any(1)
    per_class = []
    for c in np.unique(y):
        sel = y == c
        delta = int(right[sel].sum()) - int(ref_right[sel].sum())
        if delta < 0:
            per_class.append({"class": int(c), "name": class_names[c], "images": int(sel.sum()), "lost": -delta})
    per_class.sort(key=lambda d: (-d["lost"], d["class"]))
    lo, hi = proportion_ci(int(right.sum()), n, resamples=resamples, seed=seed)
    dlo, dhi = paired_delta_ci(int(gained.sum()), int(lost.sum()), n, resamples=resamples, seed=seed)
    flipped = [names[i] for i in np.flatnonzero(ok)[lost]][:FLIPS_LISTED] if names else []
    return {"images": n, "top1": float(right.mean()), "top1_ci95": [lo, hi], "top5": float(top5.mean()),
            "delta_top1": float(right.mean() - ref_right.mean()), "delta_top1_ci95": [dlo, dhi],
            "delta_top5": float(top5.mean() - ref_top5.mean()),
            "agreement_top1": float((p[:, 0] == r[:, 0]).mean()), "changed": int((p[:, 0] != r[:, 0]).sum()),
            "right_to_wrong": int(lost.sum()), "wrong_to_right": int(gained.sum()),
            "classes_lost": per_class[:CLASSES_LISTED], "right_to_wrong_files": flipped}


# ------------------------------------------------------------------------------------ running
class FolderReader:
    """Files ``[lo, hi)`` of a labelled folder, decoded and preprocessed (``data.folders``). Picklable: a Ray
    worker reads its own batches."""

    def __init__(self, files: list[Path], size: int, cfg, skip_bad: bool):
        self.files, self.size, self.cfg, self.skip_bad = list(files), size, cfg, skip_bad

    def __len__(self) -> int:
        return len(self.files)

    def read(self, lo: int, hi: int, skip: set[int]) -> tuple[np.ndarray, np.ndarray, list[int]]:
        """``(file indices, [b, 3, S, S] float32, unreadable indices)``; files in ``skip`` are not read."""
        from data.folders import batches

        local_skip = {i - lo for i in skip if lo <= i < hi}
        idx, x, bad = next(batches(self.files[lo:hi], self.size, self.cfg, hi - lo, skip=local_skip,
                                   skip_bad=self.skip_bad))
        return idx + lo, x, [b + lo for b in bad]


class ArrayReader:
    """Images already preprocessed in memory (the digits demo)."""

    def __init__(self, x: np.ndarray):
        self.x = x

    def __len__(self) -> int:
        return len(self.x)

    def read(self, lo: int, hi: int, skip: set[int]) -> tuple[np.ndarray, np.ndarray, list[int]]:
        idx = np.array([i for i in range(lo, hi) if i not in skip], np.int64)
        return idx, self.x[idx], []


def predict(fn: Callable[[np.ndarray], np.ndarray], reader, preds: Predictions, unreadable: set[int],
            batch: int, label: str, progress: bool = True) -> float | None:
    """Fill ``preds`` from ``preds.done`` on, batch by batch, saving every ``SAVE_EVERY`` batches; returns the
    ``perf_counter`` at which the first batch was done (None: nothing was left to do)."""
    from tqdm import tqdm

    n = len(preds.top)
    first = None
    bar = tqdm(total=n, initial=preds.done, desc=label, unit="img", file=sys.stderr, disable=not progress,
               dynamic_ncols=True, leave=False)
    try:
        for step, lo in enumerate(range(preds.done, n, batch), 1):
            idx, x, bad = reader.read(lo, min(lo + batch, n), unreadable)
            unreadable.update(bad)
            if len(idx):
                preds.top[idx] = top_k(fn(x))
            first = first or time.perf_counter()
            preds.done = min(n, lo + batch)  # each batch covers ``batch`` files (fewer at the end)
            bar.update(preds.done - bar.n)
            if step % SAVE_EVERY == 0:
                preds.save()
    finally:  # interrupted or failed: keep what is done, a rerun resumes from there
        bar.close()
        preds.save()
    return first


class LocalEngine:
    """The passes in this process, one after the other, at ``threads`` runtime threads (the default engine;
    ``--ray`` swaps in :class:`benchmarks.cluster.RayEngine`, which has the same ``run``). No ``threads``:
    ``export.runners.default_threads()`` (2, or ``$MOBILEVIT_THREADS``)."""

    def __init__(self, threads: int | None = None):
        from export.runners import default_threads

        self.threads = default_threads() if threads is None else threads

    def describe(self) -> dict:
        return {"engine": "local", "threads": self.threads}

    def close(self) -> None:
        pass

    def run(self, passes: list[Pass], reader, unreadable: set[int], batch: int, progress: bool = True) -> None:
        """Fill each pass's predictions; only the reference pass adds to ``unreadable`` (the others skip them).
        PyTorch and the torch-kernel runners set torch's thread count; it is restored after."""
        with torch_threads():
            self._run(passes, reader, unreadable, batch, progress)

    def _run(self, passes, reader, unreadable, batch, progress) -> None:
        for p in passes:
            start, done, first = time.perf_counter(), p.preds.done, None
            try:
                fn, p.runtime = load_fn(p.source, self.threads)
                first = predict(fn, reader, p.preds, unreadable if p.reference else set(unreadable), batch,
                                p.label, progress)
            except Exception as e:
                if p.reference:
                    raise
                p.error = f"{type(e).__name__}: {e}"
            finally:
                p.timing = timing(time.perf_counter() - start, p.preds.done - done, first and first - start)


def _convert_target(model, target: str, precisions: list[str], size: int, calib: np.ndarray,
                    work: Path) -> dict[str, str]:
    """One target's conversion (in a worker process): ``{precision: artifact path or 'error: ...'}``."""
    from export import convert_all, target_config, with_target_defaults

    _say(f"converting {target} {', '.join(precisions)} ...")
    try:
        paths = convert_all(with_target_defaults(model, target), target, precisions, work / target, size=size,
                            calibration=calib, **target_config(target).logits_options)
    except Exception as e:  # a conversion that fails is a row with its error, not the end of the run
        return {p: f"error: {type(e).__name__}: {e}" for p in precisions}
    return {p: str(v) for p, v in paths.items()}


def _threads(n: int) -> None:
    """A conversion worker's torch threads: the cores shared among the workers (more threads than cores spin)."""
    torch.set_num_threads(n)


def _convert(model, todo: dict[str, list[str]], size: int, calib: np.ndarray, work: Path, state: dict,
             save_state: Callable[[], None]) -> dict[str, dict[str, Path | str]]:
    """``{target: {precision: artifact path or 'error: ...'}}``, reusing the artifacts of an interrupted run.

    The targets convert side by side, one process each on up to ``os.cpu_count()``, the longest first (a
    conversion is mostly one core of Python: the four targets of the digits demo take 171 s on 2 cores
    instead of 321 s one after another, AMD Zen 3, one run each). Each finished target is saved in ``state``
    at once, for a resumed run."""
    made: dict[str, dict[str, Path | str]] = {}
    left: dict[str, list[str]] = {}
    for target, precisions in todo.items():
        done = state.get("artifacts", {}).get(target, {})
        if all(p in done and Path(done[p]).exists() for p in precisions):
            made[target] = {p: Path(done[p]) for p in precisions}
        elif precisions:
            left[target] = precisions

    def record(target: str, out: dict[str, str]) -> None:
        made[target] = {p: v if v.startswith("error: ") else Path(v) for p, v in out.items()}
        state.setdefault("artifacts", {}).setdefault(target, {}).update(
            {p: v for p, v in out.items() if not v.startswith("error: ")})
        save_state()

    left = dict(sorted(left.items(), key=lambda kv: -TARGETS[kv[0]].conversion_seconds))  # longest first
    workers = min(len(left), os.cpu_count() or 1)
    if workers <= 1:
        for target, precisions in left.items():
            record(target, _convert_target(model, target, precisions, size, calib, work))
        return made
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    # spawn, not fork: the parent's torch and onnxruntime thread pools do not survive a fork
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"), initializer=_threads,
                             initargs=(max(1, (os.cpu_count() or 1) // workers),)) as pool:
        futures = {pool.submit(_convert_target, model, target, precisions, size, calib, work): target
                   for target, precisions in left.items()}
        for future in as_completed(futures):
            target = futures[future]
            try:
                out = future.result()
            except Exception as e:  # the worker process died (killed, out of memory): that target's rows say so
                out = {p: f"error: {type(e).__name__}: {e}" for p in left[target]}
            record(target, out)
    return made


def evaluate(model: torch.nn.Module, reader, labels: np.ndarray, class_names: list[str],
             artifacts: list[Artifact], size: int, calib: np.ndarray, work: Path, *, batch: int = 32,
             engine=None, names: list[str] | None = None, store: Path | None = None,
             state: dict | None = None, save_state: Callable[[], None] = lambda: None,
             progress: bool = True) -> tuple[list[dict], list[int]]:
    """Every artifact on every image: ``(rows, unreadable file indices)``. PyTorch runs first: its
    predictions are the reference, and its pass finds the unreadable files the others then skip (and stops
    a run on a bad image before any conversion). Then every artifact is converted, here and once, and the
    ``engine`` (:class:`LocalEngine` by default) runs all their passes in one go: on a Ray cluster, one pool
    of workers for all of them."""
    engine = engine or LocalEngine()
    n = len(labels)
    unreadable = set((state or {}).get("unreadable", []))
    state = state if state is not None else {}
    timings, runtimes = state.setdefault("timing", {}), state.setdefault("runtimes", {})

    def run(passes: list[tuple[Artifact, Pass]]) -> None:
        try:
            engine.run([p for _, p in passes], reader, unreadable, batch, progress)
        finally:
            for a, p in passes:
                if p.timing:
                    timings[a.name] = p.timing
                if p.runtime and not p.error:
                    runtimes[a.name] = p.runtime
            state["unreadable"] = sorted(unreadable)
            save_state()

    ref = Predictions(store, PYTORCH, n)
    if not ref.complete:
        run([(PYTORCH, Pass("pytorch fp32", model, ref, reference=True))])
    rows = [_row(PYTORCH, f"torch {torch.__version__}", ref.top, ref.top, labels, class_names, names)]
    _say(f"pytorch fp32: top-1 {rows[0]['top1']:.2%}")
    by_target: dict[str, list[str]] = {}
    for a in artifacts:
        if a != PYTORCH:
            by_target.setdefault(a.target, []).append(a.precision)
    listed: list[tuple[Artifact, Predictions, str]] = []  # every artifact, its predictions, a conversion's error
    passes: list[tuple[Artifact, Pass]] = []
    stored = {t: [Predictions(store, Artifact(t, p), n) for p in ps] for t, ps in by_target.items()}
    made = _convert(model, {t: [p for p, s in zip(ps, stored[t]) if not s.complete] for t, ps in by_target.items()},
                    size, calib, work, state, save_state)
    for target, precisions in by_target.items():
        paths = made.get(target, {})
        for p, preds in zip(precisions, stored[target]):
            a, path = Artifact(target, p), paths.get(p)
            listed.append((a, preds, path if isinstance(path, str) else ""))
            if isinstance(path, Path):
                passes.append((a, Pass(f"{target} {p}", path, preds)))
    if passes:
        run(passes)
    errors = {a: p.error for a, p in passes if p.error}
    for a, preds, error in listed:
        error = error or errors.get(a, "")
        runtime = runtimes.get(a.name, "")  # this run's, or an earlier run's for an artifact finished there
        row = (_row(a, runtime, preds.top, ref.top, labels, class_names, names) if not error
               else {"target": a.target, "precision": a.precision, "artifact": a.name, "runtime": runtime,
                     "error": error})
        _say(f"{a.target} {a.precision}: "
             + (f"top-1 {row['top1']:.2%}, {row['changed']} changed" if not error else error))
        rows.append(row)
    return rows, sorted(unreadable)


def _row(a: Artifact, runtime: str, pred, ref, labels, class_names, names) -> dict:
    return {"target": a.target, "precision": a.precision, "artifact": a.name, "runtime": runtime, "error": "",
            **score(pred, ref, labels, class_names, names)}


# ------------------------------------------------------------------------------ user folders
def _run_key(ckpt, files, size: int, limit: int | None, skip_bad: bool) -> str:
    """What a run's predictions depend on; a rerun with the same key resumes."""
    h = hashlib.sha256(json.dumps({"weights": ckpt.sha256, "variant": ckpt.variant, "size": size, "limit": limit,
                                   "skip_bad": skip_bad, "layout": files.layout}).encode())
    for name, label in zip(files.names, files.labels.tolist()):
        h.update(f"{name}\t{label}\n".encode())
    return h.hexdigest()[:16]


def run_folder(weights: str | Path, images: str | Path, *, labels: str | Path | None = None,
               targets: list[str] | None = None, precisions: list[str] | None = None, limit: int | None = None,
               batch: int = 32, out: Path = DEFAULT_OUT, size: int | None = None, variant: str | None = None,
               threads: int = 2, skip_bad: bool = False, force: bool = False, seed: int = 0,
               calibration: str | Path | None = None, progress: bool = True, ray: str | None = None,
               workers: int | None = None) -> dict:
    """The command on a user's checkpoint and labelled folder; everything is checked before any work.
    ``ray``: run the predictions on a Ray cluster (``"local"``: one on this machine; ``"auto"``, an address
    or ``ray://host:port``: an existing one) with ``workers`` actors per artifact (default: its CPUs)."""
    from data.datasets import DatasetError
    from data.folders import scan
    from export.convert import calibration_photos
    from mobilevit import get_config
    from mobilevit.checkpoints import load_checkpoint, load_model

    artifacts = plan(targets, precisions)
    if batch < 1:
        raise AccuracyConfigError(f"--batch {batch}: give a batch of at least 1 image")
    if limit is not None and limit < 1:
        raise AccuracyConfigError(f"--limit {limit}: give at least 1 image, or leave it out for all")
    if workers is not None and (ray is None or workers < 1):
        raise AccuracyConfigError(f"--workers {workers}: give --ray and at least 1 worker")
    ckpt = load_checkpoint(weights, variant)
    cfg = get_config(ckpt.variant, num_classes=ckpt.num_classes)
    size = int(size or ckpt.extra.get("eval_size") or cfg.preprocessing.crop_size)
    if size % 32 or size < 64:
        raise AccuracyConfigError(f"--size {size}: MobileViT takes multiples of 32 from 64 (e.g. 256)")
    files = scan(images, ckpt.num_classes, ckpt.class_names, labels).balanced(limit, seed)
    _say(f"{files.describe()}; checkpoint {ckpt.format} MobileViT {ckpt.variant} ({Path(weights).name})")
    key = _run_key(ckpt, files, size, limit, skip_bad)
    out = Path(out)
    store = out / "predictions"
    state_file = store / STATE
    state = json.loads(state_file.read_text()) if state_file.exists() else None
    if state and state.get("key") != key:
        if not force:
            raise AccuracyConfigError(
                f"{out} holds the predictions of another run (other checkpoint, images or options): "
                "choose another --out, or pass --force to replace them")
        shutil.rmtree(store)
        state = None
    out_existed = out.exists()
    try:
        store.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise AccuracyConfigError(f"cannot write to {out} ({e}): choose a writable --out") from e
    fresh = state is None
    if fresh:
        state = {"key": key, "created": _now()}
    else:
        _say(f"resuming the run in {store} (same checkpoint, images and options)")

    def save_state():
        write_atomic(state_file, lambda f: f.write(json.dumps(state, indent=1).encode()))

    model = load_model(weights, ckpt.variant)
    calib = calibration_photos(cfg, size, folder=calibration) if any(a.precision in ("int8", "w8a8")
                                                                     for a in artifacts) else None

    reader = FolderReader(files.files, size, cfg, skip_bad)
    save_state()
    engine = LocalEngine(threads)
    try:
        if ray is not None:
            from .cluster import RayEngine

            engine = RayEngine(ray, workers, log=_say)
        rows, unreadable = evaluate(model, reader, files.labels, files.class_names, artifacts, size, calib,
                                    store / "artifacts", batch=batch, engine=engine, names=files.names,
                                    store=store, state=state, save_state=save_state, progress=progress)
    except DatasetError:  # an unreadable image: bad input, so a fresh run leaves nothing behind
        if fresh:
            shutil.rmtree(store if out_existed else out, ignore_errors=True)
        raise
    finally:
        engine.close()
    result = {"meta": {**_meta(ckpt, weights, size, threads, batch, seed), "started": state["created"],
                       "engine": engine.describe(), "timing": state.get("timing", {}),
                       "images_dir": str(files.root), "layout": files.layout, "labels_file": str(labels or ""),
                       "images": len(files), "limit": limit,
                       "unreadable": [files.names[i] for i in unreadable],
                       "calibration": str(calibration) if calibration else "photos shipped with the packages",
                       "dataset": files.root.name},
              "rows": rows}
    write(result, out)
    return result


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _meta(ckpt, weights, size: int, threads: int, batch: int, seed: int) -> dict:
    from mobilevit import get_config

    pre = get_config(ckpt.variant).preprocessing
    return {"created": _now(), "checkpoint": str(weights), "checkpoint_sha256": ckpt.sha256, "origin": ckpt.origin,
            "format": ckpt.format, "variant": ckpt.variant, "num_classes": ckpt.num_classes, "size": size,
            "preprocessing": {**pre.describe(), "short_side": pre.short_side(size), "crop": size},
            "threads": threads, "batch": batch, "seed": seed, "bootstrap_resamples": 2000}


# ------------------------------------------------------------------------------- digits demo
def run(checkpoint: Path, out: Path, train_if_missing: bool = True, limit: int | None = None,
        progress: bool = False) -> dict:
    """The demo: the fine-tuned digits checkpoint on its validation split, the whole matrix."""
    from data.datasets import load
    from mobilevit.checkpoints import load_checkpoint, load_model
    from training.finetune import TrainConfig, train

    if not checkpoint.exists():
        if not train_if_missing:
            raise FileNotFoundError(f"{checkpoint} does not exist: run `make finetune` first")
        _say(f"{checkpoint} not found: fine-tuning first (make finetune) ...")
        train(TrainConfig(out=str(checkpoint.parent)))
    ckpt = load_checkpoint(checkpoint)
    model = load_model(checkpoint)
    size = int(ckpt.extra.get("eval_size", 64))
    cfg = ckpt.extra.get("train_config", {})
    data = load(cfg.get("dataset", "digits"), size, seed=int(cfg.get("seed", 0)))
    x, y = data.val.images.numpy(), data.val.labels.numpy()
    if limit:
        x, y = x[:limit], y[:limit]
    batch = 64
    with tempfile.TemporaryDirectory(prefix="acc-") as tmp:
        rows, _ = evaluate(model, ArrayReader(x), y, data.class_names, plan(), size, data.train.images[:64].numpy(),
                           Path(tmp), batch=batch, progress=progress)
    result = {"meta": {**_meta(ckpt, checkpoint, size, 2, batch, 0), "dataset": data.name, "layout": "in-memory",
                       "preprocessing": f"{data.name} validation split, already {size}x{size} in memory "
                                        "(data.datasets)", "images": int(len(y)), "unreadable": []},
              "rows": rows}
    write(result, out)
    return result


# ------------------------------------------------------------------------------------ reports
def _pct(v: float) -> str:
    return f"{100 * v:.2f}%"


def _pt(v: float) -> str:
    return f"{100 * v:+.2f}"


def render(result: dict) -> str:
    m = result["meta"]
    scored = next((r["images"] for r in result["rows"] if not r["error"]), 0)
    lines = [f"Accuracy drift: MobileViT {m['variant']} ({m['origin']}, {m['num_classes']} classes) on "
             f"{m['dataset']}: {scored} images ({m['layout']} layout) at {m['size']}x{m['size']}"
             + (f", {len(m['unreadable'])} unreadable skipped" if m["unreadable"] else "") + f" ({m['created']}).",
             "Intervals: bootstrap 95% (the change against PyTorch is paired: same images).", "",
             "| artifact | runtime | top-1 [95% CI] | top-5 | top-1 vs PyTorch, pt [95% CI] | agrees with PyTorch "
             "| right -> wrong | wrong -> right | classes that lost most |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        name = f"{r['target']} {r['precision']}"
        if r["error"]:
            lines.append(f"| {name} | {r['runtime']} | — | — | — | — | — | — | {r['error'][:80]} |")
            continue
        lo, hi = r["top1_ci95"]
        dlo, dhi = r["delta_top1_ci95"]
        lost = ", ".join(f"{c['name'].split(',')[0]} (-{c['lost']}/{c['images']})"  # "tench, Tinca tinca": tench
                         for c in r["classes_lost"][:3]) or "none"
        lines.append(f"| {name} | {r['runtime']} | {_pct(r['top1'])} [{_pct(lo)}, {_pct(hi)}] | {_pct(r['top5'])} | "
                     f"{_pt(r['delta_top1'])} [{_pt(dlo)}, {_pt(dhi)}] | {_pct(r['agreement_top1'])} | "
                     f"{r['right_to_wrong']} | {r['wrong_to_right']} | {lost} |")
    return "\n".join(lines) + "\n"


CSV_FIELDS = ("target", "precision", "artifact", "runtime", "images", "top1", "top1_ci95_low", "top1_ci95_high",
              "top5", "delta_top1", "delta_top1_ci95_low", "delta_top1_ci95_high", "delta_top5", "agreement_top1",
              "changed", "right_to_wrong", "wrong_to_right", "classes_lost", "error")


def csv_rows(result: dict) -> list[dict]:
    """One flat row per artifact: intervals as two columns, lost classes as ``name:-k`` pairs."""
    out = []
    for r in result["rows"]:
        flat = {k: r.get(k, "") for k in CSV_FIELDS}
        if not r["error"]:
            flat.update(top1_ci95_low=r["top1_ci95"][0], top1_ci95_high=r["top1_ci95"][1],
                        delta_top1_ci95_low=r["delta_top1_ci95"][0], delta_top1_ci95_high=r["delta_top1_ci95"][1],
                        classes_lost="; ".join(f"{c['name']}:-{c['lost']}" for c in r["classes_lost"]))
        out.append(flat)
    return out


def plot(result: dict, path: Path) -> None:
    """Top-1 per artifact with its interval (PyTorch's as a line); flips per artifact."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in result["rows"] if not r["error"]]
    labels = [f"{r['target']} {r['precision']}" for r in rows]
    y = np.arange(len(rows))
    fig, (acc, flips) = plt.subplots(1, 2, figsize=(11, 0.32 * len(rows) + 1.8), sharey=True)
    top1 = np.array([100 * r["top1"] for r in rows])
    err = np.array([[100 * (r["top1"] - r["top1_ci95"][0]), 100 * (r["top1_ci95"][1] - r["top1"])] for r in rows]).T
    acc.barh(y, top1, xerr=err, capsize=2, color=["#999999" if r["target"] == "pytorch" else "#1f77b4" for r in rows])
    acc.axvline(top1[0], color="#999999", lw=0.8, ls="--")
    acc.set_xlim(max(0.0, float((top1 - err[0]).min()) - 5), min(100.0, float((top1 + err[1]).max()) + 2))
    acc.set_yticks(y, labels)
    acc.invert_yaxis()
    acc.set_xlabel("top-1, % (bars: bootstrap 95% CI; dashed: PyTorch)")
    flips.barh(y - 0.2, [r["right_to_wrong"] for r in rows], height=0.4, color="#d62728", label="right -> wrong")
    flips.barh(y + 0.2, [r["wrong_to_right"] for r in rows], height=0.4, color="#2ca02c", label="wrong -> right")
    most = max([1] + [max(r["right_to_wrong"], r["wrong_to_right"]) for r in rows])
    flips.set_xlim(0, most * 1.15)
    flips.xaxis.get_major_locator().set_params(integer=True)
    if most == 1 and not any(r["right_to_wrong"] or r["wrong_to_right"] for r in rows):
        flips.text(0.5, 0.5, "no prediction flipped", transform=flips.transAxes, ha="center", color="#555555")
    flips.set_xlabel("predictions flipped against PyTorch")
    flips.legend(loc="lower right", fontsize=8)
    m = result["meta"]
    fig.suptitle(f"MobileViT {m['variant']} on {m['dataset']} ({rows[0]['images']} images): accuracy per artifact")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write(result: dict, out: Path, stem: str = "accuracy") -> dict[str, Path]:
    """JSON, CSV, markdown and PNG, each written whole (temporary file, then rename)."""
    import csv
    import io

    out.mkdir(parents=True, exist_ok=True)
    paths = {ext: out / f"{stem}.{ext}" for ext in ("json", "csv", "md", "png")}
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_FIELDS, lineterminator="\n")
    w.writeheader()
    w.writerows(csv_rows(result))
    write_atomic(paths["json"], lambda f: f.write((json.dumps(result, indent=1) + "\n").encode()))
    write_atomic(paths["csv"], lambda f: f.write(buf.getvalue().encode()))
    write_atomic(paths["md"], lambda f: f.write(render(result).encode()))
    write_atomic(paths["png"], lambda f: plot(result, f))
    return paths


# ---------------------------------------------------------------------------------------- CLI
def _list(value: str | None) -> list[str] | None:
    """``a,b`` -> ``["a", "b"]``; ``none`` -> ``[]`` (PyTorch alone); unset -> None (everything)."""
    if value is None:
        return None
    return [] if value.strip() == "none" else [v.strip() for v in value.split(",") if v.strip()]


def main(argv=None) -> int:
    os.environ["PATH"] = str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", "")
    p = argparse.ArgumentParser(prog="python -m benchmarks.accuracy", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", help="your checkpoint (any public format, or a Hugging Face model folder)")
    p.add_argument("--images", help="labelled images: DIR/<synset>/*, DIR/<class name>/*, or flat with --labels")
    p.add_argument("--labels", help="labels of a flat folder: filename,class_index CSV, or one label per line "
                                    "(class index or synset id) in sorted file order")
    p.add_argument("--targets", help=f"comma-separated, default all: {','.join(MATRIX)}; none: PyTorch alone")
    p.add_argument("--precisions", help="comma-separated, default every precision of each target")
    p.add_argument("--limit", type=int, help="a class-balanced subset of N images")
    p.add_argument("--batch", type=int, default=32, help="images decoded and run per batch (default 32)")
    p.add_argument("--out", type=Path, help=f"output folder (default {DEFAULT_OUT}; the demo: {RESULTS})")
    p.add_argument("--size", type=int, help="input size (default: the checkpoint's, 256 for public weights)")
    p.add_argument("--variant", help="refuse a checkpoint of any other variant")
    p.add_argument("--threads", type=int, default=2, help="runtime threads of a local run (default 2; Ray workers: 1)")
    p.add_argument("--ray", nargs="?", const="local", metavar="ADDRESS",
                   help="run on a Ray cluster: alone, one started on this machine; 'auto', HOST:PORT or "
                        "ray://HOST:PORT, an existing one (the image folder must be at the same path on every node)")
    p.add_argument("--workers", type=int, help="with --ray: actors per artifact, 1 CPU each (default: all CPUs)")
    p.add_argument("--calibration", help="folder of images that calibrate int8 (default: photos the packages ship)")
    p.add_argument("--skip-bad", action="store_true", help="count and list unreadable images instead of stopping")
    p.add_argument("--force", action="store_true", help="replace another run's predictions in --out")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--checkpoint", type=Path, default=Path("artifacts/finetune/model.pt"),
                   help="the demo's fine-tuned checkpoint (without --weights)")
    p.add_argument("--render", type=Path, metavar="DIR", help="only rewrite DIR/accuracy.{csv,md,png} from its JSON")
    a = p.parse_args(argv)
    if a.render:
        result = json.loads((a.render / "accuracy.json").read_text())
        write(result, a.render)
        print(render(result))
        return 0
    from data.datasets import DatasetError
    from mobilevit.checkpoints import CheckpointError
    from mobilevit.config import UnknownVariantError

    from .cluster import ClusterError

    try:
        if a.weights or a.images:
            if not (a.weights and a.images):
                raise AccuracyConfigError("give both --weights CKPT and --images DIR (or neither, for the demo)")
            result = run_folder(a.weights, a.images, labels=a.labels, targets=_list(a.targets),
                                precisions=_list(a.precisions), limit=a.limit, batch=a.batch,
                                out=a.out or DEFAULT_OUT, size=a.size, variant=a.variant, threads=a.threads,
                                skip_bad=a.skip_bad, force=a.force, calibration=a.calibration,
                                progress=not a.no_progress, ray=a.ray, workers=a.workers)
        else:
            if a.ray is not None:
                raise AccuracyConfigError("--ray runs a folder: give --weights CKPT and --images DIR")
            result = run(a.checkpoint, a.out or RESULTS, limit=a.limit)
    except (AccuracyConfigError, DatasetError, CheckpointError, UnknownVariantError, ClusterError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        _say("interrupted: rerun the same command to resume")
        return 130
    print(render(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
