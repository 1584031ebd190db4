"""Validate an artifact against PyTorch fp32 on real photographs; report every failure at once.

The validation stage of an export: :func:`validate_artifact` runs the artifact in its runtime
(``export.runners``) on each size's photos, measures its :class:`Drift` from PyTorch and checks
it against the tolerance table (``export.config.TOLERANCES``).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .config import Tolerance, tolerance
from .errors import RunnerUnavailable, ValidationError

__all__ = ["Drift", "drift", "failures", "ValidationError", "ValidationReport", "validate_artifact",
           "torch_reference"]


@dataclass
class Drift:
    """Drift of one artifact's logits (or a classifier's probabilities) from PyTorch fp32 on the same batch."""

    images: int
    max_abs: float
    max_abs_rel: float  # max_abs / the output's scale: max |torch logit|, or 1 for probabilities
    mean_abs: float
    cosine_min: float
    cosine_mean: float
    top1_agreement: float
    top5_agreement: float  # fraction of images whose torch top-1 is in the artifact's top-5
    output: str = "logits"  # logits | probabilities (what was compared, and the scale of max_abs_rel)

    def to_dict(self) -> dict:
        return asdict(self)


def drift(reference: np.ndarray, output: np.ndarray, probabilities: bool = False) -> Drift:
    """Compare ``[B, K]`` logits, or a classifier's probabilities; numbers only, no judgement.

    ``max_abs_rel`` puts the largest difference on the output's scale: logits' scale differs between
    checkpoints (divide by max |logit|); probabilities live in [0, 1], so their difference is taken as
    it is. Dividing by the largest probability instead would call a 0.0017 change of the near-uniform
    0.005 probabilities of synthetic weights "0.32 of the range".
    """
    ref, out = np.asarray(reference, np.float64), np.asarray(output, np.float64)
    if ref.shape != out.shape:
        raise ValueError(f"output shape {out.shape} differs from the reference {ref.shape}")
    diff = np.abs(out - ref)
    denom = np.linalg.norm(ref, axis=1) * np.linalg.norm(out, axis=1)
    cos = np.where(denom > 0, (ref * out).sum(1) / np.maximum(denom, 1e-300), 0.0)
    top1 = ref.argmax(1)
    top5 = np.argsort(-out, axis=1)[:, :5]
    return Drift(
        images=int(ref.shape[0]),
        max_abs=float(diff.max()),
        max_abs_rel=float(diff.max() if probabilities else diff.max() / max(np.abs(ref).max(), 1e-12)),
        mean_abs=float(diff.mean()),
        cosine_min=float(cos.min()),
        cosine_mean=float(cos.mean()),
        top1_agreement=float((out.argmax(1) == top1).mean()),
        top5_agreement=float(np.mean([t in row for t, row in zip(top1, top5)])),
        output="probabilities" if probabilities else "logits",
    )


def failures(d: Drift, tol: Tolerance, where: str) -> list[str]:
    """Each limit of ``tol`` that ``d`` breaks, as a readable line."""
    out = []
    if not np.isfinite(d.max_abs):
        out.append(f"{where}: output is not finite (NaN/inf)")
        return out
    if d.max_abs_rel > tol.max_abs_rel and d.output == "probabilities":
        out.append(f"{where}: a class probability moved by {d.max_abs:.3g} (limit {tol.max_abs_rel:g})")
    elif d.max_abs_rel > tol.max_abs_rel:
        out.append(f"{where}: max abs diff {d.max_abs:.3g} is {d.max_abs_rel:.3g} of the logit range "
                   f"(limit {tol.max_abs_rel:g})")
    if d.cosine_min < tol.cosine_min:
        out.append(f"{where}: cosine similarity {d.cosine_min:.6f} (limit {tol.cosine_min})")
    if d.top1_agreement < tol.top1_min:
        out.append(f"{where}: top-1 agreement {d.top1_agreement:.1%} (limit {tol.top1_min:.0%})")
    return out


@dataclass
class ValidationReport:
    """Per-size drift figures, plus checks that could not run (with the reason)."""

    tolerance: Tolerance  # or a SegmentationTolerance
    runtime: str = ""
    by_size: dict[int, Drift] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict:
        return {"tolerance": asdict(self.tolerance), "runtime": self.runtime,
                "by_size": {str(k): v.to_dict() for k, v in self.by_size.items()},
                "skipped": self.skipped, "problems": self.problems, "passed": self.passed}

    def raise_if_failed(self, artifact: str) -> None:
        if self.problems:
            raise ValidationError(artifact, self.problems)


def int8_blame(target: str, precision: str, float_kinds: tuple[str, ...] | None) -> str:
    """For an int8 artifact that failed: the layer kinds it quantized, worst first by the sensitivity
    table (``export.config.INT8_SENSITIVITY``), and what to do about it. Empty for precisions without an
    int8 recipe."""
    from .config import INT8_SENSITIVITY, INT8_SENSITIVITY_MEASURED, int8_recipe
    from .int8 import float_kinds as kept_float

    if int8_recipe(target, precision) is None:
        return ""
    from mobilevit.layers import KINDS

    kept = kept_float(target, precision, float_kinds)
    int8 = [k for k in KINDS if k not in kept]
    rank = f"`python -m benchmarks.quant --targets {target} --images YOUR_PHOTOS` ranks them on your photos"
    cosine = INT8_SENSITIVITY.get((target, precision), {})
    blamed = sorted((k for k in int8 if k in cosine), key=lambda k: cosine[k])
    if not blamed:
        return (f"int8 layer kinds in this artifact: {', '.join(int8)}; keep the sensitive ones in float with "
                f"--float-kinds {','.join(kept) or 'KIND,...'}[,KIND]; {rank}")
    worst = ", ".join(f"{k} (cosine {cosine[k]:.4f} when int8 alone)" for k in blamed[:3])
    keep = ",".join(dict.fromkeys([*kept, *blamed[:2]]))
    return (f"the sensitivity table (INT8_SENSITIVITY: {INT8_SENSITIVITY_MEASURED.split(';')[0]}) "
            f"blames {worst}; keep them in float with --float-kinds {keep}, or {rank}")


def torch_reference(model: torch.nn.Module, softmax: bool = False) -> Callable[[np.ndarray], np.ndarray]:
    """PyTorch's answer for a batch: logits, or probabilities for a classifier artifact.

    Every precision of an export is validated on the same photos: the answer for a batch equal to one seen
    before is that answer again (a copy), not another forward pass. ``model`` must not change meanwhile."""
    answers: list[tuple[np.ndarray, np.ndarray]] = []  # (a copy of a batch, PyTorch's answer for it)

    def run(x: np.ndarray) -> np.ndarray:
        for seen, y in answers:
            if seen.shape == x.shape and np.array_equal(seen, x):
                return y.copy()
        with torch.no_grad():
            y = model(torch.from_numpy(x))
            y = (y.softmax(-1) if softmax else y).numpy()
        answers.append((x.copy(), y))
        return y.copy()
    return run


def validate_artifact(path: Path, target: str, precision: str, reference: Callable[[np.ndarray], np.ndarray],
                      batches: dict[int, np.ndarray], progress: bool | None = None,
                      task: str = "classification", probabilities: bool = False) -> ValidationReport:
    """Run ``path`` in its runtime on each size's photos and compare with ``reference``: logits (and top-1)
    for a classifier, or its probabilities (``probabilities``: an artifact that ends in a softmax, and a
    ``reference`` that does too), logits and class maps for segmentation (``export.tasks``).

    A progress bar counts the photos (``export.quiet.progress``; ``progress=None``: when stderr is a TTY)."""
    from .config import SEGMENTATION_TOLERANCES
    from .quiet import progress as bar
    from .runners import make_runner
    from .tasks import segmentation_drift, segmentation_failures

    segmentation = task == "segmentation"
    report = ValidationReport(SEGMENTATION_TOLERANCES[(target, precision)] if segmentation
                              else tolerance(target, precision))
    try:
        runner = make_runner(path)
    except RunnerUnavailable as e:
        report.skipped.append(f"skipped: {e}")
        return report
    report.runtime = f"{runner.runtime} {runner.version}"
    counter = bar(total=sum(len(x) for x in batches.values()), desc=f"{target} {precision} validation",
                  unit="photo", enabled=progress)
    for size, x in batches.items():
        try:
            out = []
            for i in range(len(x)):
                out.append(runner(x[i:i + 1]))  # one photo at a time, so the bar moves
                counter.update(1)
            out = np.concatenate(out)
        except Exception as e:  # a runtime that cannot run the artifact is a validation failure
            report.problems.append(f"{size}x{size}: {runner.runtime} could not run it: {type(e).__name__}: {e}")
            continue
        if segmentation:
            d = segmentation_drift(reference(x), out, (x.shape[2], x.shape[3]))
            report.problems += segmentation_failures(d, report.tolerance, f"{size}x{size}")
        else:
            d = drift(reference(x), out, probabilities)
            report.problems += failures(d, report.tolerance, f"{size}x{size}")
        report.by_size[size] = d
    counter.refresh()  # the finished count, drawn even if the last photo came within tqdm's redraw interval
    counter.close()
    return report
