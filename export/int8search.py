"""Which layers an int8 artifact keeps in float, chosen for the checkpoint in hand by measurement.

The fixed recipe (``export.config.INT8_RECIPES``) is one answer for every checkpoint. Here the answer is
searched: every layer's drift when it *alone* is int8 (measured in the target's runtime on held-out
photos) ranks the layers; the search then starts from everything int8 and returns the worst layers to
float until a fidelity budget holds on held-out photos (as NNCF's ``quantize_with_accuracy_control``
returns the layers that cost most to float until the metric holds). Ranked by drift per unit of what
the layer's int8 buys (its multiply-accumulates), the layers that carry the compute stay int8 longest.

Pure logic; a target supplies ``evaluate(float_layers) -> figures`` (:func:`search`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

from .errors import ExportConfigError

BUDGET_FORMS = "cosine=C (mean logit cosine against fp32 at least C, 0 < C <= 1; default cosine=0.999) or " \
               "top1=P (top-1 at most P points below fp32 on labelled photos, P >= 0)"
DEFAULT_BUDGET = "cosine=0.999"
# photos the search is measured on: a searching converter takes the last SEARCH_IMAGES of its calibration
# array as them (``export.request.calibration`` puts them there) and calibrates on the rest. As many as the
# export validates on: with 8, a set chosen on them once failed validation's worst cosine (0.9941, limit 0.9955)
SEARCH_IMAGES = 16
# a top-1 budget: held-out labelled photos, balanced over the classes, from the files of the user's class folders
# that validation and calibration do not read; at least SEARCH_IMAGES, at most TOP1_IMAGES
TOP1_IMAGES = 64
TOP1_NEEDS = ("a top-1 budget is measured on labelled photos the export neither validates nor calibrates on: give "
              "--images DIR laid out in class folders (DIR/<class name>/*.jpg or DIR/<synset>/*.JPEG) holding at "
              f"least {SEARCH_IMAGES} images beyond those it validates and calibrates on, or give cosine=C")


@dataclass(frozen=True)
class Budget:
    """The fidelity an int8 artifact must keep: ``cosine`` (mean logit cosine to fp32 >= value) or ``top1``
    (top-1 drop in points <= value)."""
    metric: str
    value: float

    def holds(self, figures: dict) -> bool:
        """``figures``: ``{"cosine": mean cosine}`` or ``{"top1_drop": points}``."""
        if self.metric == "cosine":
            return figures["cosine"] >= self.value
        return figures["top1_drop"] <= self.value

    def __str__(self) -> str:
        return f"{self.metric}={self.value:g}"


def parse_budget(text: str) -> Budget:
    """``"cosine=0.999"`` or ``"top1=0.5"``; anything else is an :class:`ExportConfigError` naming the forms."""
    metric, sep, value = str(text).strip().partition("=")
    try:
        number = float(value)
    except ValueError:
        number = None
    if not sep or metric not in ("cosine", "top1") or number is None or number != number:
        raise ExportConfigError(f"--int8-budget {text!r}: give {BUDGET_FORMS}")
    if metric == "cosine" and not 0 < number <= 1:
        raise ExportConfigError(f"--int8-budget {text!r}: a cosine budget is in (0, 1]; give {BUDGET_FORMS}")
    if metric == "top1" and number < 0:
        raise ExportConfigError(f"--int8-budget {text!r}: a top-1 budget is a drop of 0 or more points; "
                                f"give {BUDGET_FORMS}")
    return Budget(metric, number)


def rank(sensitivity: dict[str, float], gain: dict[str, float] | None = None) -> list[str]:
    """Layers in the order they go back to float. ``sensitivity``: each layer's drift with it alone int8
    (1 - mean cosine). Without ``gain``: most drift first. With ``gain`` (what a layer's int8 buys: its
    multiply-accumulates, or its measured time saving): first the layers whose int8 buys nothing or costs
    time (gain <= 0, the worst first), then most drift per unit of gain, so the layers that cost fidelity and
    buy little leave int8 before those that carry the speed (AIMET AMP's trade of accuracy against cost,
    greedily). Ties: by name, so the order is reproducible."""
    if gain is None:
        return sorted(sensitivity, key=lambda name: (-sensitivity[name], name))

    def key(name: str):
        g = gain.get(name, 0.0)
        return (0, g, name) if g <= 0 else (1, -sensitivity[name] / g, name)
    return sorted(sensitivity, key=key)


@dataclass
class SearchResult:
    float_layers: list[str]  # what stays float, in the order it was returned
    figures: dict  # the held-out figures of the chosen set
    budget: str
    evaluations: list[dict] = field(default_factory=list)  # every set tried: {"float": n, "figures", "holds"}
    met: bool = True  # False: even every ranked layer in float misses the budget


def search(ranked: Sequence[str], evaluate: Callable[[list[str]], dict], budget: Budget,
           always_float: Sequence[str] = ()) -> SearchResult:
    """``always_float`` and the shortest prefix of ``ranked`` that, kept float, meets ``budget``: bisection over
    the prefix length (the drift shrinks as layers return to float), each candidate measured by ``evaluate``
    (the target's runtime on held-out photos). The chosen set is always one that was measured to hold.
    ``always_float``: layers whose int8 is measured to buy no time (they only cost fidelity)."""
    tried: dict[int, dict] = {}
    fixed = list(always_float)
    ranked = [n for n in ranked if n not in set(fixed)]

    def holds(k: int) -> bool:
        if k not in tried:
            figures = evaluate(fixed + list(ranked[:k]))
            tried[k] = {"float": len(fixed) + k, "figures": figures, "holds": budget.holds(figures)}
        return tried[k]["holds"]

    if holds(0):
        k = 0
    elif not holds(len(ranked)):
        k = len(ranked)
    else:
        lo, hi = 0, len(ranked)  # lo fails, hi holds
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (lo, mid) if holds(mid) else (mid, hi)
        k = hi
    return SearchResult(fixed + list(ranked[:k]), tried[k]["figures"], str(budget),
                        [tried[i] for i in sorted(tried)], met=tried[k]["holds"])
