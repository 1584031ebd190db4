"""The int8 search on ONNX (``export.int8search``): any set of layers int8 on one calibration, measured in
onnxruntime on held-out photos; each layer's drift alone and its time saving from onnxruntime's profiler."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ...int8search import SEARCH_IMAGES
from .quantize import convert_onnx_precision, layer_nodes
from .runner import OnnxRuntimeRunner


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-row cosine of two ``[N, C]`` logit arrays."""
    a, b = a.astype(np.float64), b.astype(np.float64)
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-30)


class OnnxLayerSearch:
    """An fp32 ONNX model of ``model`` (``export.convert``'s, so its nodes match the layers), calibration photos
    and held-out photos; :meth:`quantize` makes an int8 model of any layer set, :meth:`evaluate` its figures."""

    def __init__(self, model: torch.nn.Module, fp32: Path, calibration: np.ndarray, heldout: np.ndarray,
                 work: Path, labels: np.ndarray | None = None, threads: int = 1):
        import onnx

        self.fp32, self.work, self.threads = Path(fp32), Path(work), threads
        self.work.mkdir(parents=True, exist_ok=True)
        matches = layer_nodes(onnx.load(str(fp32)), model)
        self.nodes = {layer.name: ids for layer, ids in matches}
        self.kinds = {layer.name: layer.kind for layer, _ in matches}
        self.layers = list(self.nodes)
        self.calibration, self.heldout, self.labels = calibration, heldout, labels
        self.cache = self.work / "calibration.json"  # onnxruntime's ranges: calibrated once, by the first call
        self.reference = OnnxRuntimeRunner(self.fp32, threads)(heldout)
        self.n = 0

    def quantize(self, int8_layers: list[str]) -> Path:
        """An int8 model with ``int8_layers`` int8 and everything else float (its file in ``work``)."""
        self.n += 1
        out = self.work / f"int8_{self.n}.onnx"
        nodes = [i for name in int8_layers for i in self.nodes[name]]
        return convert_onnx_precision(self.fp32, out, "int8", calibration=self.calibration, int8_nodes=nodes,
                                      calibration_cache=self.cache)

    def figures(self, path: Path) -> dict:
        logits = OnnxRuntimeRunner(path, self.threads)(self.heldout)
        cos = cosines(logits, self.reference)
        out = {"cosine": float(cos.mean()), "worst_cosine": float(cos.min()),
               "max_abs_rel": float(np.abs(logits - self.reference).max() / np.abs(self.reference).max()),
               "agreement_top1": float((logits.argmax(1) == self.reference.argmax(1)).mean())}
        if self.labels is not None:
            out["top1_drop"] = 100 * float((self.reference.argmax(1) == self.labels).mean()
                                           - (logits.argmax(1) == self.labels).mean())
        return out

    def evaluate(self, float_layers: list[str]) -> dict:
        """Held-out figures with every layer int8 except ``float_layers``."""
        keep = set(float_layers)
        int8 = [name for name in self.layers if name not in keep]
        if not int8:
            return self.figures(self.fp32)
        path = self.quantize(int8)
        try:
            return self.figures(path)
        finally:
            path.unlink()

    def savings(self, groups: dict[str, list[str]], runs: int = 30, seed: int = 0) -> dict[str, float]:
        """Milliseconds per image each group of layers saves when it alone is int8 (negative: it costs time):
        the fp32 model and one model per group, timed at 1 thread in shuffled interleaved rounds, medians."""
        import time

        paths = {g: self.quantize(layers) for g, layers in groups.items() if layers}
        runners = {"": OnnxRuntimeRunner(self.fp32, 1), **{g: OnnxRuntimeRunner(p, 1) for g, p in paths.items()}}
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
        for p in paths.values():
            p.unlink()
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

    def sensitivity(self, layers: list[str] | None = None) -> dict[str, float]:
        """Each layer's drift (1 - mean cosine) with it alone int8."""
        out = {}
        for name in layers or self.layers:
            path = self.quantize([name])
            try:
                out[name] = 1.0 - self.figures(path)["cosine"]
            finally:
                path.unlink()
        return out




class ValidatedBudget:
    """The user's budget, and the export's validation limits (``export.config.TOLERANCES``) with three quarters
    of their allowed drift kept as a margin: the search's photos are not the validation photos, and a set
    chosen at the limit on some photos may miss it on others. Measured: a set at worst cosine >= 0.99775 on 8
    search photos (half the drift as margin) gave 0.9941 on the 16 validation photos, 2.6x the drift."""

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


def layer_search(model: torch.nn.Module, calibration: np.ndarray, heldout: np.ndarray, work: Path,
                 size: int) -> OnnxLayerSearch:
    """The registry's ``int8_search`` hook: the fp32 ONNX model of ``model`` as ``export.convert`` makes it
    (same exporter, so its nodes match the layers), ready to quantize any layer set."""
    from ...convert import convert_all

    fp32 = convert_all(model, "onnx", ["fp32"], Path(work) / "fp32", size=size)["fp32"]
    return OnnxLayerSearch(model, fp32, calibration, heldout, Path(work) / "search")


def search_int8(model: torch.nn.Module, fp32: Path, calibration: np.ndarray, budget: str, work: Path,
                size: int, labels: tuple[int, ...] | None = None) -> tuple[list[str], np.ndarray, dict]:
    """``(int8 node names, calibration photos, record)``: the layers this checkpoint keeps int8 under ``budget``.

    The last ``SEARCH_IMAGES`` calibration photos (``len(labels)`` with ``labels``, a top-1 budget's) are the
    search's held-out photos (``export.request`` puts them there: the last of a user's folder, other views of
    the validation pool, or labelled files of a user's class folders) and the rest calibrate, so the
    published artifact is validated on photos neither saw. Layers of kinds measured no faster
    in int8 stay float; the rest are ranked by drift alone per millisecond saved, and the search returns the worst
    to float until the budget holds (``export.int8search``).
    """
    import time

    from mobilevit.layers import layer_macs

    from ...config import tolerance
    from ...errors import ExportConfigError
    from ...int8search import TOP1_NEEDS, parse_budget, rank, search

    parsed = parse_budget(budget)
    if parsed.metric == "top1" and not labels:
        raise ExportConfigError(f"--int8-budget {budget}: {TOP1_NEEDS}")
    held = len(labels) if labels else SEARCH_IMAGES
    if calibration is None or len(calibration) < held + SEARCH_IMAGES:
        raise ExportConfigError(f"--int8-budget needs at least {held + SEARCH_IMAGES} calibration photos "
                                f"({held} are held out for the search); give more --images")
    start = time.perf_counter()
    calib, heldout = calibration[:-held], calibration[-held:]
    s = OnnxLayerSearch(model, fp32, calib, heldout, work, labels=None if labels is None else np.asarray(labels))
    drift = s.sensitivity()
    macs = layer_macs(model, size)
    total = sum(macs.values())
    gain = s.gains(macs)
    found = search(rank(drift, gain), s.evaluate, ValidatedBudget(parsed, tolerance("onnx", "int8")),
                   always_float=[n for n in s.layers if gain[n] <= 0])
    if not found.met:
        raise ExportConfigError(f"--int8-budget {budget}: not met even with every layer float "
                                f"({found.figures}); relax the budget")
    keep = set(found.float_layers)
    record = {"budget": found.budget, "float_layers": found.float_layers,
              "int8_layers": [n for n in s.layers if n not in keep],
              "int8_mac_share": round(1 - sum(macs[n] for n in keep) / total, 4),
              "float_kinds_touched": sorted({s.kinds[n] for n in keep}),
              "heldout_figures": found.figures, "heldout_images": held, "heldout_labelled": bool(labels),
              "calibration_images": int(len(calib)), "sets_measured": len(found.evaluations),
              "drift_alone": {n: round(v, 8) for n, v in drift.items()},
              "saving_ms": {n: round(v, 5) for n, v in gain.items()},
              "seconds": round(time.perf_counter() - start, 1),
              "runtime": "onnxruntime (CPU)",
              "ranking": "kinds measured no faster in int8 first (always float), then drift alone per ms saved"}
    nodes = [i for n in s.layers if n not in keep for i in s.nodes[n]]
    return nodes, calib, record
