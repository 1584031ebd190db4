"""Validate an artifact against PyTorch fp32 on real photographs; report every failure at once."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from .config import Tolerance


@dataclass
class Drift:
    """Drift of one artifact's logits from PyTorch fp32 on the same batch."""

    images: int
    max_abs: float
    max_abs_rel: float  # max_abs / max |torch logit|
    mean_abs: float
    cosine_min: float
    cosine_mean: float
    top1_agreement: float
    top5_agreement: float  # fraction of images whose torch top-1 is in the artifact's top-5

    def to_dict(self) -> dict:
        return asdict(self)


def drift(reference: np.ndarray, output: np.ndarray) -> Drift:
    """Compare ``[B, K]`` logits; numbers only, no judgement."""
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
        max_abs_rel=float(diff.max() / max(np.abs(ref).max(), 1e-12)),
        mean_abs=float(diff.mean()),
        cosine_min=float(cos.min()),
        cosine_mean=float(cos.mean()),
        top1_agreement=float((out.argmax(1) == top1).mean()),
        top5_agreement=float(np.mean([t in row for t, row in zip(top1, top5)])),
    )


def failures(d: Drift, tol: Tolerance, where: str) -> list[str]:
    """Each limit of ``tol`` that ``d`` breaks, as a readable line."""
    out = []
    if not np.isfinite(d.max_abs):
        out.append(f"{where}: output is not finite (NaN/inf)")
        return out
    if d.max_abs_rel > tol.max_abs_rel:
        out.append(f"{where}: max abs diff {d.max_abs:.3g} is {d.max_abs_rel:.3g} of the logit range "
                   f"(limit {tol.max_abs_rel:g})")
    if d.cosine_min < tol.cosine_min:
        out.append(f"{where}: cosine similarity {d.cosine_min:.6f} (limit {tol.cosine_min})")
    if d.top1_agreement < tol.top1_min:
        out.append(f"{where}: top-1 agreement {d.top1_agreement:.1%} (limit {tol.top1_min:.0%})")
    return out


class ValidationError(RuntimeError):
    """An artifact does not compute what PyTorch computes; lists every failing check."""

    def __init__(self, artifact: str, problems: list[str]):
        self.artifact = artifact
        self.problems = problems
        super().__init__(f"{artifact} failed validation:\n  - " + "\n  - ".join(problems))


@dataclass
class ValidationReport:
    """Per-size drift figures, plus checks that could not run (with the reason)."""

    tolerance: Tolerance
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
