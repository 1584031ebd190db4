"""Which layers an int8 artifact keeps in float, chosen for the checkpoint in hand by measurement.

The fixed recipe (``export.config.INT8_RECIPES``) is one answer for every checkpoint. Here the answer is
searched: every layer's drift when it *alone* is int8 (measured in the target's runtime on held-out
photos) ranks the layers; the search then starts from everything int8 and returns the worst layers to
float until a fidelity budget holds on held-out photos (as NNCF's ``quantize_with_accuracy_control``
returns the layers that cost most to float until the metric holds). Ranked by drift per unit of what
the layer's int8 buys (its multiply-accumulates), the layers that carry the compute stay int8 longest.

The ranking and the bisection (:func:`rank`, :func:`search`) are pure logic. :class:`LayerSearch` measures any
layer set in a runtime; a target subclasses it with its quantizer (``quantize``) and runner, and registers a
hook that builds it (``TargetConfig.int8_search``). :func:`choose` is what a converter calls for ``--int8-budget``.
"""
from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from .errors import ExportConfigError

BUDGET_FORMS = "cosine=C (mean logit cosine against fp32 at least C, 0 < C <= 1; default cosine=0.999) or " \
               "top1=P (top-1 at most P points below fp32 on labelled photos, P >= 0)"
DEFAULT_BUDGET = "cosine=0.999"
# what the search maximises under the budget: "speed", measured in the target's runtime on this machine (the
# default), or "macs", the multiply-accumulates in int8, for a device other than the exporting machine (a phone's
# NPU or DSP, whose int8 speed this machine cannot measure); "macs" times nothing, so it chooses the same set on
# every machine. No objective given: "speed" where the target's runner times its runtime here
# (``Runner.timeable``), else "macs" (Core ML off macOS: the reference executor computes Core ML's numbers, not
# its speed)
OBJECTIVES = ("speed", "macs")
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


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-row cosine of two ``[N, C]`` logit arrays."""
    a, b = a.astype(np.float64), b.astype(np.float64)
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-30)


class LayerSearch:
    """Any set of a model's layers int8 (the rest float), measured in a target's runtime on held-out photos
    against the target's fp32 artifact. A target subclasses it with ``quantize(int8_layers) -> path`` (one
    calibration, any layer set) and ``runner`` (its ``export.runners.Runner``); ``layers``: the layers of
    ``model`` in execution order, ``kinds``: each one's ``mobilevit.layers`` kind."""

    runner: type = None  # the target's Runner class
    # how :meth:`measure` measures a layer set, and how :meth:`gains` times a layer (for reports)
    measured_in = "the target's runtime, on an artifact quantized for the set"
    timed_by = "a kind's saving (the kind alone int8, timed against fp32 at 1 thread), shared among its layers by MACs"

    def __init__(self, model, fp32: Path, layers: list[str], kinds: dict[str, str], heldout: np.ndarray, work: Path,
                 labels: np.ndarray | None = None, threads: int = 1):
        self.model = model  # the model (as the target's converter gets it) whose layers these are
        self.fp32, self.work, self.threads = Path(fp32), Path(work), threads
        self.work.mkdir(parents=True, exist_ok=True)
        self.layers, self.kinds = list(layers), dict(kinds)
        self.heldout, self.labels = heldout, labels
        self.reference = self.runner(self.fp32, threads)(heldout)

    def quantize(self, int8_layers: list[str]) -> Path:  # pragma: no cover - the target's
        """An int8 artifact with ``int8_layers`` int8 and everything else float (a new file in ``work``)."""
        raise NotImplementedError

    def scores(self, logits: np.ndarray) -> dict:
        """Held-out figures of ``logits`` against the fp32 artifact's."""
        cos = cosines(logits, self.reference)
        out = {"cosine": float(cos.mean()), "worst_cosine": float(cos.min()),
               "max_abs_rel": float(np.abs(logits - self.reference).max() / np.abs(self.reference).max()),
               "agreement_top1": float((logits.argmax(1) == self.reference.argmax(1)).mean())}
        if self.labels is not None:
            out["top1_drop"] = 100 * float((self.reference.argmax(1) == self.labels).mean()
                                           - (logits.argmax(1) == self.labels).mean())
        return out

    def figures(self, path: Path) -> dict:
        """Held-out figures of an artifact, in the target's runtime."""
        return self.scores(self.runner(path, self.threads)(self.heldout))

    def measure(self, int8_layers: list[str]) -> dict:
        """Held-out figures with exactly ``int8_layers`` int8: an artifact quantized and run in the runtime. A
        target whose artifacts are slow to make may simulate instead (and show that simulation predicts it)."""
        path = self.quantize(int8_layers)
        try:
            return self.figures(path)
        finally:
            _remove(path)

    def evaluate(self, float_layers: list[str]) -> dict:
        """Held-out figures with every layer int8 except ``float_layers``."""
        keep = set(float_layers)
        int8 = [name for name in self.layers if name not in keep]
        return self.measure(int8) if int8 else self.figures(self.fp32)

    def sensitivity(self, layers: list[str] | None = None) -> dict[str, float]:
        """Each layer's drift (1 - mean cosine) with it alone int8."""
        return {name: 1.0 - self.measure([name])["cosine"] for name in (self.layers if layers is None else layers)}

    def savings(self, groups: dict[str, list[str]], runs: int = 30, seed: int = 0) -> dict[str, float]:
        """Milliseconds per image each group of layers saves when it alone is int8 (negative: it costs time):
        the fp32 artifact and one per group, timed at 1 thread in shuffled interleaved rounds, medians."""
        paths = {g: self.quantize(layers) for g, layers in groups.items() if layers}
        runners = {"": self.runner(self.fp32, 1), **{g: self.runner(p, 1) for g, p in paths.items()}}
        feed = runners[""].prepare(self.heldout[:1])
        samples: dict[str, list[float]] = {k: [] for k in runners}
        rng = np.random.default_rng(seed)
        names = list(runners)
        for _ in range(runs):
            for k in rng.permutation(len(names)):
                run = runners[names[k]].run
                t = time.perf_counter()
                run(feed)
                samples[names[k]].append(time.perf_counter() - t)
        del runners
        for p in paths.values():
            _remove(p)
        base = float(np.median(samples[""]))
        return {g: 1e3 * (base - float(np.median(samples[g]))) if g in samples else 0.0 for g in groups}

    def gains(self, macs: dict[str, int]) -> dict[str, float]:
        """Milliseconds each layer's int8 saves: its kind's measured saving (:meth:`savings`, the kind alone
        int8), shared among the kind's layers by their multiply-accumulates (``macs``). Per kind, not per
        layer: one layer's saving is too small to time apart from the noise."""
        kinds: dict[str, list[str]] = {}
        for name in self.layers:
            kinds.setdefault(self.kinds[name], []).append(name)
        saved = self.savings(kinds)
        return {n: saved[k] * macs[n] / max(sum(macs[m] for m in names), 1)
                for k, names in kinds.items() for n in names}


class ValidatedBudget:
    """The user's budget, and the export's validation limits (``export.config.TOLERANCES``) with three quarters
    of their allowed drift kept as a margin: the search's photos are not the validation photos, and a set
    chosen at the limit on some photos may miss it on others. Measured (ONNX): a set at worst cosine >= 0.99775 on
    8 search photos (half the drift as margin) gave 0.9941 on the 16 validation photos, 2.6x the drift."""

    MARGIN = 4  # the search allows 1/MARGIN of the validation limits' drift

    def __init__(self, budget, tol):
        self.budget, self.tol = budget, tol

    def holds(self, f: dict) -> bool:
        return (self.budget.holds(f) and f["worst_cosine"] >= 1 - (1 - self.tol.cosine_min) / self.MARGIN
                and f["max_abs_rel"] <= self.tol.max_abs_rel / self.MARGIN
                and f["agreement_top1"] >= self.tol.top1_min)

    def __str__(self) -> str:
        return (f"{self.budget}, and worst cosine >= {1 - (1 - self.tol.cosine_min) / self.MARGIN:g}, max abs rel "
                f"<= {self.tol.max_abs_rel / self.MARGIN:g}, top-1 agreement >= {self.tol.top1_min:g}")


def _remove(path: Path) -> None:
    """An artifact file, or a directory one (a Core ML ``.mlpackage``)."""
    shutil.rmtree(path) if Path(path).is_dir() else Path(path).unlink()


def check_objective(objective: str | None) -> str | None:
    """``objective`` if it is one of :data:`OBJECTIVES` (or None: the target's default); else an
    :class:`ExportConfigError` naming them."""
    if objective is not None and objective not in OBJECTIVES:
        raise ExportConfigError(f"--int8-objective {objective!r}: choose one of {', '.join(OBJECTIVES)} (speed: "
                                "measured in the runtime here; macs: the most multiply-accumulates in int8)")
    return objective


def resolve_objective(objective: str | None, runner) -> str:
    """``objective``, or for None "speed" where ``runner`` times its runtime (``Runner.timeable``) and else "macs";
    "speed" with a runner that cannot is an :class:`ExportConfigError` naming the fix."""
    if check_objective(objective) is None:
        return "speed" if runner.timeable else "macs"
    if objective == "speed" and not runner.timeable:
        raise ExportConfigError(f"--int8-objective speed: {runner.runtime} computes the artifact's numbers but its "
                                "speed is not the target runtime's, so no layer can be timed on this machine: give "
                                "--int8-objective macs (the most multiply-accumulates in int8), or search on a "
                                "machine that runs the target's own runtime")
    return objective


def objective_gains(s: LayerSearch, macs: dict[str, int], objective: str) -> dict[str, float]:
    """What each layer's int8 buys under ``objective`` (resolved: :func:`resolve_objective`): its measured saving
    in milliseconds (``speed``, :meth:`LayerSearch.gains`) or its multiply-accumulates (``macs``, nothing timed).
    A layer buying nothing (gain <= 0) stays float."""
    if objective == "speed":
        return s.gains(macs)
    if objective != "macs":
        raise ValueError(f"objective_gains takes a resolved objective ({', '.join(OBJECTIVES)}), got {objective!r}")
    return {n: float(macs[n]) for n in s.layers}


def int8_mac_share(macs: dict[str, int], int8_layers) -> float:
    """The share of the model's multiply-accumulates (``macs``: every layer's, ``mobilevit.layers.layer_macs``) in
    ``int8_layers``. A layer a target cannot make int8 (Core ML's attention matmuls) is never among them: it
    counts as float."""
    return sum(macs[n] for n in set(int8_layers)) / sum(macs.values())


def choose(make: Callable[[np.ndarray, np.ndarray, np.ndarray | None], LayerSearch], model, size: int,
           calibration: np.ndarray, budget: str, target: str, precision: str,
           labels: tuple[int, ...] | None = None, objective: str | None = None
           ) -> tuple[LayerSearch, list[str], np.ndarray, dict]:
    """``(search, int8 layers, calibration photos, record)``: the layers this checkpoint keeps int8 under
    ``budget``, for ``--int8-budget`` in a converter. ``make(calibration, heldout, labels)`` builds the target's
    :class:`LayerSearch`.

    The last ``SEARCH_IMAGES`` calibration photos (``len(labels)`` with ``labels``, a top-1 budget's) are the
    search's held-out photos (``export.request`` puts them there: the last of a user's folder, other views of
    the validation pool, or labelled files of a user's class folders) and the rest calibrate, so the
    published artifact is validated on photos neither saw. With ``objective`` "speed", layers whose int8
    measured no faster stay float (their drift alone is not measured) and the rest are ranked by drift alone per
    millisecond saved; with "macs", every layer is ranked by drift alone per multiply-accumulate. The search
    returns the worst to float until the budget (and the validation limits, with a margin:
    :class:`ValidatedBudget`) holds."""
    from mobilevit.layers import layer_macs

    from .config import tolerance

    parsed = parse_budget(budget)
    if parsed.metric == "top1" and not labels:
        raise ExportConfigError(f"--int8-budget {budget}: {TOP1_NEEDS}")
    held = len(labels) if labels else SEARCH_IMAGES
    if calibration is None or len(calibration) < held + SEARCH_IMAGES:
        raise ExportConfigError(f"--int8-budget needs at least {held + SEARCH_IMAGES} calibration photos "
                                f"({held} are held out for the search); give more --images")
    start = time.perf_counter()
    calib, heldout = calibration[:-held], calibration[-held:]
    s = make(calib, heldout, None if labels is None else np.asarray(labels))
    objective = resolve_objective(objective, s.runner)
    macs = layer_macs(s.model, size)
    gain = objective_gains(s, macs, objective)
    always_float = [n for n in s.layers if gain[n] <= 0]
    drift = s.sensitivity([n for n in s.layers if gain[n] > 0])  # the others stay float whatever they drift
    found = search(rank(drift, gain), s.evaluate, ValidatedBudget(parsed, tolerance(target, precision)),
                   always_float=always_float)
    if not found.met:
        raise ExportConfigError(f"--int8-budget {budget}: not met even with every layer float "
                                f"({found.figures}); relax the budget")
    keep = set(found.float_layers)
    if len(keep) == len(s.layers):
        why = (f"{len(always_float)} of {len(s.layers)} measured no faster in int8 on this machine's "
               f"{s.runner.runtime}, the rest returned to float for the budget" if objective == "speed" else
               f"all {len(s.layers)} returned to float for the budget")
        raise ExportConfigError(f"--int8-budget {budget}: no layer stays int8 ({why}): export fp32, or drop "
                                "--int8-budget for the fixed recipe")
    int8 = [n for n in s.layers if n not in keep]
    record = {"budget": found.budget, "float_layers": found.float_layers, "int8_layers": int8,
              "int8_mac_share": round(int8_mac_share(macs, int8), 4),
              "float_kinds_touched": sorted({s.kinds[n] for n in keep}),
              "heldout_figures": found.figures, "heldout_images": held, "heldout_labelled": bool(labels),
              "calibration_images": int(len(calib)), "sets_measured": len(found.evaluations),
              "drift_alone": {n: round(v, 8) for n, v in drift.items()},
              "objective": objective,
              **({"saving_ms": {n: round(v, 5) for n, v in gain.items()}} if objective == "speed" else {}),
              "seconds": round(time.perf_counter() - start, 1),
              "runtime": s.runner.runtime, "measured_in": s.measured_in,
              "ranking": ("layers measured no faster in int8 always float (their drift alone not measured), then "
                          "the most drift alone per ms saved first") if objective == "speed" else
                         "the most drift alone per multiply-accumulate first"}
    return s, record["int8_layers"], calib, record
