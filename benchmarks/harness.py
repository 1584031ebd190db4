"""Build every artifact of the matrix, then measure drift and interleaved latency on the same inputs.

Artifacts come from ``export.convert_all`` (the one conversion path the CLI uses, with each
target's default rewrites from ``export.with_target_defaults``) and run through
``export.make_runner``; nothing here converts or runs an artifact its own way.

Timing method (numbers are kept raw in the JSON):
* each thread count is timed on its own; within it, every round runs the rows in a fresh
  shuffled order (seeded; the orders are recorded), each row one untimed call then ``BLOCK``
  timed calls, so load changes and one runtime's leftover threads hit every row alike;
* the input is converted (dtype, NHWC) before the timer: only the runtime's call is timed;
* onnxruntime runs with spinning off (recorded per row in ``settings``);
* the GEMM peaks (fp32 and int8) are measured at the start and at the end of the run.
"""
from __future__ import annotations

import copy
import json
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from export import TARGETS, convert, convert_all, make_runner, target_config, with_target_defaults
from export.config import TOLERANCES
from export.validate import drift, failures
from mobilevit import DEFAULT_SIZE, MobileViT, count_macs
from mobilevit.atomic import write_text

from .peak import measure_peaks
from .stats import gflops, summarize

BLOCK = 5  # timed calls per row per round
FEW_CORES = 4  # on a machine with this many logical cores or fewer, multi-thread figures are noisy


@dataclass
class Entry:
    """One row of the matrix: an artifact (or PyTorch itself), and how to run it."""

    name: str
    runtime: str
    target: str  # a registry target, or "pytorch"
    precision: str
    # ours: our exporter with the target's rewrites | hf-as-is: Hugging Face MobileViT, TorchScript exporter,
    # opset 17, no rewrites | hf-our-exporter: Hugging Face MobileViT through our exporter settings, no rewrites
    source: str
    patches: str
    attention: str
    make_runner: Callable[[int], object] | None  # threads -> runner (prepare/run/__call__)
    version: str = ""
    artifact: str = ""
    settings: dict = field(default_factory=dict)
    latency_skip: str = ""  # why latency is not measured (e.g. a reference executor)
    error: str = ""
    results: dict = field(default_factory=dict)


def _say(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


CPU_INT8_FLAGS = ("avx512_vnni", "avx_vnni", "avx512_bf16", "amx_tile", "amx_int8", "amx_bf16")


def machine_info() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "logical_cores": os.cpu_count(), "system": platform.system(),
            "python": platform.python_version()}


def cpu_info() -> dict:
    """The CPU model (name, family, model: a name like "AMD EPYC" does not say which generation), its int8/bf16
    extensions (from /proc/cpuinfo's flags) and core count."""
    info = machine_info()
    fields: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            fields.setdefault(key.strip(), value.strip())
            if not line.strip():  # the first processor's block is enough
                break
    except OSError:
        pass
    flags = set(fields.get("flags", "").split())
    info["cpu_family"], info["cpu_model"] = fields.get("cpu family"), fields.get("model")
    info["int8_extensions"] = {f: f in flags for f in CPU_INT8_FLAGS}
    return info


def run_meta(program: str, argv) -> dict:
    """What every result file starts with: the command that made it, when, and on which CPU."""
    args = argv if argv is not None else sys.argv[1:]
    return {"command": " ".join([program, *args]), "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "cpu": cpu_info()}


def write_result(out: Path, stem: str, result: dict, markdown: str) -> None:
    """``out/stem.json`` (the numbers, first) and ``out/stem.md`` (their table), and the table on stdout."""
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / f"{stem}.json", json.dumps(result, indent=1) + "\n")
    write_text(out / f"{stem}.md", markdown)
    print(markdown, end="")


EXIT_BAD_INPUT = 2  # every benchmark command exits 2 on bad input, as `python -m export` does


class BenchmarkInputError(ValueError):
    """Bad input on a benchmark's command line (exit 2): an artifact that is not there or not one of ours, a bad
    option value."""


def artifact_manifest(path: Path) -> dict:
    """The manifest ``python -m export`` wrote beside (or inside) an artifact."""
    for m in (path.parent / "manifest.json", path / "manifest.json"):
        if m.exists():
            return json.loads(m.read_text())
    raise BenchmarkInputError(f"{path}: no manifest.json beside it; give an artifact folder written by "
                              "`python -m export ... --out DIR`")


def artifact_photos(manifest: dict, count: int) -> np.ndarray:
    """``count`` photos, preprocessed as the artifact's model expects (the checkpoint's channel order and scale)."""
    from data.photos import photo_variants
    from mobilevit import get_config
    from mobilevit.preprocess import preprocess

    size = int(manifest["input"]["shape"][-1])
    cfg = get_config(manifest["variant"], num_classes=int(manifest.get("num_classes") or 1000))
    return preprocess(photo_variants(count, seed=5), cfg, size).numpy()


def noisy_threads(threads: int, cores: int | None) -> bool:
    """Multi-thread timings on a machine with few cores compete with everything else running on it."""
    return threads > 1 and (cores or 1) <= FEW_CORES


# ---------------------------------------------------------------------------------- torch rows
class TorchRunner:
    """PyTorch eager as a runner: ``prepare`` makes the tensor (and its memory format) outside the timer."""

    runtime = "torch"
    timeable = True

    def __init__(self, model: torch.nn.Module, threads: int, channels_last: bool = False, bf16: bool = False):
        self.model, self.threads, self.channels_last, self.bf16 = model, threads, channels_last, bf16
        self.version = torch.__version__
        self.settings = {"threads": threads, "channels_last": channels_last, "bf16_autocast": bf16}

    def prepare(self, x: np.ndarray) -> torch.Tensor:
        t = torch.from_numpy(np.ascontiguousarray(x))
        return t.to(memory_format=torch.channels_last) if self.channels_last else t

    def run(self, feed: torch.Tensor) -> np.ndarray:
        torch.set_num_threads(self.threads)
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16):
            return self.model(feed).float().numpy()

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.run(self.prepare(x))


def torch_entries(model: MobileViT) -> list[Entry]:
    cl_model = copy.deepcopy(model).eval().to(memory_format=torch.channels_last)  # same weights and layouts
    p, a, v = model.patches.name, model.attention_layout, torch.__version__
    return [Entry("pytorch fp32", "torch", "pytorch", "fp32", "ours", p, a, lambda t: TorchRunner(model, t), v),
            Entry("pytorch fp32 channels-last", "torch", "pytorch", "fp32-cl", "ours", p, a,
                  lambda t: TorchRunner(cl_model, t, channels_last=True), v),
            Entry("pytorch bf16 autocast", "torch", "pytorch", "bf16", "ours", p, a,
                  lambda t: TorchRunner(model, t, bf16=True), v)]


# ------------------------------------------------------------------------------ artifact rows
def artifact_entry(target: str, precision: str, source: str, labels: tuple[str, str], path: Path,
                   prefix: str = "") -> Entry:
    """A row for an exported file; ``labels`` = (patch strategy, attention layout)."""
    def factory(threads, path=path):
        return make_runner(path, threads=threads)

    try:
        runner = make_runner(path, threads=1)
    except Exception as e:  # reported in the table
        return Entry(f"{prefix}{target} {precision}", target, target, precision, source, *labels, None,
                     artifact=str(path), error=f"{type(e).__name__}: {e}")
    entry = Entry(f"{prefix}{runner.runtime} {precision}", runner.runtime, target, precision, source, *labels,
                  factory, runner.version, str(path), dict(runner.settings))
    if not runner.timeable:
        entry.latency_skip = "skipped: reference executor; Core ML timing needs macOS"
    return entry


def _failed(target: str, precisions, source: str, labels, error: Exception, prefix: str = "") -> list[Entry]:
    return [Entry(f"{prefix}{target} {p}", target, target, p, source, *labels, None,
                  error=f"conversion failed: {error}") for p in precisions]


def build_entries(model: MobileViT, work: Path, targets: list[str], precisions: dict[str, tuple[str, ...]],
                  calibration: np.ndarray, baseline: bool, size: int = DEFAULT_SIZE) -> list[Entry]:
    """Export everything the matrix asks for into ``work`` through ``export.convert_all``; return the rows."""
    entries: list[Entry] = torch_entries(model) if "pytorch" in targets else []
    for target in (t for t in targets if t in TARGETS and precisions.get(t)):
        m = with_target_defaults(model, target)
        labels = (m.patches.name, m.attention_layout)
        _say(f"exporting {target} {', '.join(precisions[target])} ...")
        try:
            made = convert_all(m, target, precisions[target], work / target, size=size, calibration=calibration,
                               **target_config(target).logits_options)
        except Exception as e:
            entries += _failed(target, precisions[target], "ours", labels, e)
            continue
        entries += [artifact_entry(target, p, "ours", labels, path) for p, path in made.items()]
    if baseline:
        entries += baseline_entries(model, work, targets, calibration)
    _say(f"{len(entries)} rows for {model.cfg.name}")
    return entries


def baseline_entries(model: MobileViT, work: Path, targets: list[str], calibration: np.ndarray) -> list[Entry]:
    """The Hugging Face baseline rows each asked target declares (``TargetConfig.baselines``)."""
    from .baseline import hf_model

    hf = hf_model(model)
    labels = ("hf-as-is", "batched")
    out = []
    rows = [(b.source, target, b.options) for target in targets if target in TARGETS
            for b in TARGETS[target].baselines]
    for source, target, options in rows:
        prefix = f"baseline {source} "
        _say(f"exporting the Hugging Face baseline ({source}) to {target} ...")
        try:
            path = convert(hf, target, "fp32", work / f"{source}-{target}", calibration=calibration, **options)
        except Exception as e:
            out += _failed(target, ("fp32",), source, labels, e, prefix)
            continue
        out.append(artifact_entry(target, "fp32", source, labels, path, prefix))
    return out


# ---------------------------------------------------------------------------------- measuring
def measure_drift(entries: list[Entry], model: MobileViT, images: np.ndarray, task: str = "classification") -> None:
    """Each row's drift from PyTorch fp32 on ``images``, judged by its tolerance row; segmentation rows are
    compared by logits, pixel agreement and mean IoU (``export.tasks``)."""
    with torch.no_grad():
        reference = model(torch.from_numpy(images)).numpy()
    for e in entries:
        if e.make_runner is None:
            continue
        try:
            out = e.make_runner(2)(images)
        except Exception as ex:
            e.error = f"could not run: {type(ex).__name__}: {ex}"
            continue
        if task == "segmentation":
            from export.config import SEGMENTATION_TOLERANCES
            from export.tasks import segmentation_drift, segmentation_failures

            d = segmentation_drift(reference, out, images.shape[2:])
            e.results["drift"] = d.to_dict()
            tol = SEGMENTATION_TOLERANCES.get((e.target, e.precision))
            if tol is not None:
                e.results["tolerance"] = asdict(tol)
                e.results["within_tolerance"] = not segmentation_failures(d, tol, e.name)
            continue
        d = drift(reference, out)
        e.results["drift"] = d.to_dict()
        tol = TOLERANCES.get((e.target, e.precision))
        if tol is not None:
            e.results["tolerance"] = {"max_abs_rel": tol.max_abs_rel, "cosine_min": tol.cosine_min,
                                      "top1_min": tol.top1_min}
            e.results["within_tolerance"] = not failures(d, tol, e.name)


def measure_latency(entries: list[Entry], threads_list: list[int], repeats: int, warmup: int,
                    x: np.ndarray, block: int = BLOCK, seed: int = 0) -> dict:
    """Shuffled rounds of blocks per thread count; fills ``results["latency"]``; returns the orders used."""
    from export.quiet import progress

    rng = np.random.default_rng(seed)
    orders = {}
    for threads in threads_list:
        runners, feeds = {}, {}
        for e in entries:
            if e.make_runner is None or e.latency_skip or e.error:
                continue
            runners[e.name] = e.make_runner(threads)
            feeds[e.name] = runners[e.name].prepare(x)  # input conversion stays outside the timer
            for _ in range(warmup):
                runners[e.name].run(feeds[e.name])
        names = list(runners)
        samples: dict[str, list[float]] = {name: [] for name in names}
        orders[str(threads)] = []
        rounds = progress(range(-(-repeats // block)), desc=f"latency @ {threads} thread(s)", unit="round",
                          prefix="bench")  # with ETA, on a terminal only
        for _ in rounds:
            order = [names[i] for i in rng.permutation(len(names))]
            orders[str(threads)].append(order)
            for name in order:
                run, feed = runners[name].run, feeds[name]
                run(feed)  # untimed: let this runtime's threads take the cores back
                for _ in range(block):
                    t = time.perf_counter()
                    run(feed)
                    samples[name].append((time.perf_counter() - t) * 1e3)
        for e in entries:
            if e.name in samples:
                s = summarize(samples[e.name])
                s["samples_ms"] = [round(v, 4) for v in samples[e.name]]
                s["settings"] = dict(getattr(runners[e.name], "settings", {}))  # threads, spinning, ...
                e.results.setdefault("latency", {})[str(threads)] = s
                if s["spread_warning"]:
                    _say(f"warning: {e.name} @ {threads} threads is noisy (IQR {s['spread']:.0%} of the median)")
    return orders


def localize_drift(entries: list[Entry], model: MobileViT, images: np.ndarray, calibration: np.ndarray) -> None:
    """For each of our rows over its tolerance, find where the drift appears (see :mod:`.localize`)."""
    from export.config import hook

    from .localize import localize, localize_in_artifact

    for e in entries:
        if e.source != "ours" or e.results.get("within_tolerance") is not False or e.target not in TARGETS:
            continue
        _say(f"{e.name} exceeds its tolerance: localising ...")
        m, tol = with_target_defaults(model, e.target), TOLERANCES[(e.target, e.precision)]
        try:
            intermediates = hook(TARGETS[e.target], "intermediates")
            if intermediates is not None:  # inside the measured artifact itself
                e.results["localization"] = localize_in_artifact(m, intermediates(e.artifact), tol, images)
            else:
                e.results["localization"] = localize(m, e.target, e.precision, tol, images, calibration)
        except Exception as ex:  # reported in the table, the run goes on
            e.results["localization"] = {"message": f"localisation failed: {type(ex).__name__}: {ex}"}
        _say(f"{e.name}: {e.results['localization']['message']}")


def _roofline(lat: dict, precision: str, macs: int, peaks: dict, threads: str) -> None:
    """GFLOP/s (GOP/s for int8) and the fraction of the matching measured peak; fp32 and int8 rows only."""
    lat["gflops"] = gflops(macs, lat["median_ms"])
    if precision in ("fp32", "fp32-cl"):
        lat["peak_kind"], peak = "fp32", peaks["fp32_gflops"][threads]
    elif "int8" in precision:
        lat["peak_kind"], peak = "int8", peaks["int8_gops"][threads]
    else:
        lat["peak_kind"], peak = None, None
    lat["fraction_of_peak"] = lat["gflops"] / peak if peak else None
    lat["over_peak"] = bool(peak and lat["gflops"] > peak)


def run_matrix(model: MobileViT, work: Path, *, targets: list[str], precisions: dict[str, tuple[str, ...]],
               threads: list[int], repeats: int, warmup: int, images: np.ndarray, calibration: np.ndarray,
               baseline: bool, weights: str, localize_images: int = 4, seed: int = 0,
               android: tuple[Path, int] | None = None) -> dict:
    """Everything for one variant; returns the JSON-ready result.

    ``localize_images=0``: no drift localisation; ``android=(benchmark_model binary, threads)``:
    also time every ``.tflite`` row on the attached Android device.
    """
    from .report import target_status

    start = time.time()
    entries = build_entries(model, work, targets, precisions, calibration, baseline)
    _say(f"drift on {len(images)} photos ...")
    measure_drift(entries, model, images)
    if localize_images:
        localize_drift(entries, model, images[:localize_images], calibration)
    _say(f"GEMM peaks at threads {threads} ...")
    peaks_start = measure_peaks(threads)
    _say(f"latency: threads {threads}, {repeats} runs per row in shuffled rounds of {BLOCK} ...")
    orders = measure_latency(entries, threads, repeats, warmup, images[:1], seed=seed)
    peaks_end = measure_peaks(threads)
    peaks = {kind: {t: max(peaks_start[kind][t], peaks_end[kind][t]) for t in peaks_start[kind]}
             for kind in ("fp32_gflops", "int8_gops")}
    if android is not None:
        from .device import run_on_android

        for e in entries:
            if e.target in TARGETS and TARGETS[e.target].timed_on_device and e.artifact and not e.error:
                _say(f"{e.name} on Android ...")
                e.results["android"] = run_on_android(Path(e.artifact), *android)
    macs = count_macs(model, images.shape[-1])
    rows = []
    for e in entries:
        row = {"variant": model.cfg.name, "name": e.name, "runtime": e.runtime, "target": e.target,
               "version": e.version, "precision": e.precision, "source": e.source, "patches": e.patches,
               "attention": e.attention, "artifact": Path(e.artifact).name if e.artifact else "",
               "settings": e.settings, "latency_skip": e.latency_skip, "error": e.error, **e.results}
        for t, lat in row.get("latency", {}).items():
            _roofline(lat, e.precision, macs, peaks, t)
        rows.append(row)
    result = {"variant": model.cfg.name, "macs": macs, "weights": weights,
              "peaks": {"start": peaks_start, "end": peaks_end, "used": peaks,
                        "method": "fp32: the better of best-of-5 2048^3 torch matmul and onnxruntime MatMul; int8: "
                                  "best-of-5 1024^3 onnxruntime MatMulInteger (spinning off); the larger of start "
                                  "and end is used"},
              "round_orders": orders, "seconds": round(time.time() - start, 1), "rows": rows}
    result["targets"] = {str(t): target_status(result, str(t)) for t in threads}
    return result
