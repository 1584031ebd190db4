"""``python -m benchmarks.int8search``: the int8 layer set chosen for *this* checkpoint, by measurement.

    python -m benchmarks.int8search [--weights CKPT | --variant xx_small] [--images DIR]
                                    [--int8-budget cosine=0.999] [--num-images 16] [--target T]
                                    [--int8-objective speed|macs] [--out DIR] [--stem int8search]

On a target with a layer search (``TargetConfig.int8_search``: ``--target``'s choices), from the target's fp32
artifact of the model and one calibration on photos of their own:

* each of the model's layers (``mobilevit.layers``: every convolution, linear and attention matmul pair)
  quantized *alone*, its drift (1 - mean logit cosine against fp32) measured in the target's runtime on held-out
  photos (``--images``' first ``--num-images``, or views of the photos the packages ship; never the
  calibration photos);
* the search (``export.int8search``): from everything int8, the layers with the most drift per
  millisecond its int8 saves go back to float until the budget holds on the held-out photos (bisection over
  the ranking, each candidate measured); layers of a kind whose int8 measured no faster stay float (a kind's
  saving: that kind alone int8, timed against fp32 at 1 thread; shared among its layers by MACs);
* the chosen set, its share of the multiply-accumulates in int8, and the held-out figures, next to the
  fixed recipe's (``export.config.INT8_RECIPES``) on the same photos.

Results: ``--out``'s ``STEM.{json,md}`` (default ``benchmarks/results/int8search``) with the CPU and its int8
extensions. A bad ``--int8-budget`` exits 2 naming the valid forms.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from export import TARGETS
from export.errors import ExportConfigError
from export.int8search import (
    DEFAULT_BUDGET,
    OBJECTIVES,
    int8_mac_share,
    objective_gains,
    parse_budget,
    rank,
    resolve_objective,
    search,
)

from .harness import EXIT_BAD_INPUT, _say, artifact_entry, measure_latency, run_meta, write_result
from .stats import ratio_ci

RESULTS = Path(__file__).parent / "results"
VALIDATION_SEED = 0  # the views of the shipped photos the held-out figures are measured on
RUNS = 40  # timed runs per artifact, at 1 thread
CALIBRATION_DIGITS = 64  # --images digits: calibration images after the held-out ones


def run(model, variant: str, size: int, heldout: np.ndarray, calibration: np.ndarray, budget_text: str,
        work: Path, target: str, origin: str = "", objective: str | None = None) -> dict:
    """Per-layer drift, the search, and the recipe on the same held-out photos (see the module docstring)."""
    from export import target_config, with_target_defaults
    from export.config import INT8_RECIPES, load
    from export.int8 import float_kinds
    from mobilevit.layers import layer_macs

    budget = parse_budget(budget_text)
    start = time.perf_counter()
    model = with_target_defaults(model, target)
    s = load(target_config(target).int8_search)(model, calibration, heldout, work, size)
    objective = resolve_objective(objective, s.runner)
    kinds = s.kinds
    macs = layer_macs(s.model, size)
    total = sum(macs.values())
    _say(f"each of {len(s.layers)} layers int8 alone, on {len(heldout)} held-out photos ...")
    t = time.perf_counter()
    drift = s.sensitivity()
    sensitivity_s = time.perf_counter() - t
    t = time.perf_counter()
    if objective == "speed":
        _say(f"timing what each layer's int8 saves: {s.timed_by} ...")
    gain = objective_gains(s, macs, objective)
    savings_s = time.perf_counter() - t
    ranked = rank(drift, gain)
    _say(f"searching for {budget} ...")
    t = time.perf_counter()
    found = search(ranked, s.evaluate, budget, always_float=[n for n in s.layers if gain[n] <= 0])
    search_s = time.perf_counter() - t
    precision = next(p for t, p in INT8_RECIPES if t == target)
    recipe_float = [n for n in s.layers if kinds[n] in float_kinds(target, precision, None)]
    recipe = s.evaluate(recipe_float)

    def share(float_layers) -> float:
        return int8_mac_share(macs, [n for n in s.layers if n not in set(float_layers)])

    paths = {"fp32": s.fp32, "recipe": s.quantize([n for n in s.layers if n not in set(recipe_float)]),
             "searched": s.quantize([n for n in s.layers if n not in set(found.float_layers)])}
    speed = dict.fromkeys(paths)  # None: the runner cannot time the target's runtime here (Runner.timeable)
    if s.runner.timeable:
        _say(f"timing fp32, the recipe and the searched set at 1 thread ({RUNS} runs each, interleaved) ...")
        entries = [artifact_entry(target, name, "ours", ("", ""), path) for name, path in paths.items()]
        measure_latency(entries, [1], RUNS, 3, heldout[:1])
        lat = {e.precision: e.results["latency"]["1"] for e in entries}
        speed = {name: {"median_ms": lat[name]["median_ms"],
                        **({} if name == "fp32" else {"speedup": ratio_ci(lat["fp32"]["samples_ms"],
                                                                          lat[name]["samples_ms"])})}
                 for name in paths}
    runtime = {name: s.figures(paths[name]) for name in ("recipe", "searched")}  # the artifacts as timed

    return {"meta": {"variant": variant, "size": size, "weights": origin, "target": target, "budget": str(budget),
                     "measured_in": s.measured_in, "runtime": s.runner.runtime, "objective": objective,
                     "timed_by": s.timed_by if objective == "speed" else "nothing (objective macs)",
                     "savings_seconds": round(savings_s, 1),
                     "heldout_images": int(len(heldout)), "calibration_images": int(len(calibration)),
                     "sensitivity_seconds": round(sensitivity_s, 1), "search_seconds": round(search_s, 1),
                     "seconds": round(time.perf_counter() - start, 1)},
            "layers": [{"layer": n, "kind": kinds[n], "mac_share": round(macs[n] / total, 5),
                        "drift_alone": drift[n], "saving_ms": round(gain[n], 5) if objective == "speed" else None,
                        "rank": ranked.index(n) + 1}
                       for n in s.layers],
            "search": {"float_layers": found.float_layers, "met": found.met, "figures": found.figures,
                       "int8_mac_share": round(share(found.float_layers), 4), "evaluations": found.evaluations,
                       "latency": speed["searched"], "runtime_figures": runtime["searched"]},
            "recipe": {"float_layers": recipe_float, "figures": recipe,
                       "int8_mac_share": round(share(recipe_float), 4), "latency": speed["recipe"],
                       "runtime_figures": runtime["recipe"]},
            "fp32": {"latency": speed["fp32"]}}


def _ms(row: dict) -> str:
    return f"{row['latency']['median_ms']:.2f}" if row.get("latency") else "-"


def _speed(row: dict) -> str:
    sp = (row.get("latency") or {}).get("speedup")
    return f"{sp['value']:.2f}x [{sp['ci95_low']:.2f}, {sp['ci95_high']:.2f}]" if sp else "-"


def _saving(rows: list[dict]) -> str:
    return "-" if any(x["saving_ms"] is None for x in rows) else f"{sum(x['saving_ms'] for x in rows):+.2f}"


KIND_TIMING = "a kind's saving (the kind alone int8, timed against fp32 at 1 thread), shared among its layers by MACs"


def render(result: dict) -> str:
    m, cpu = result["meta"], result["meta"]["cpu"]
    ext = ", ".join(f for f, on in cpu["int8_extensions"].items() if on) or "none"
    s, r = result["search"], result["recipe"]
    simulated = m.get("measured_in", "").startswith("simulation")

    def fig(f):
        return f"mean cosine {f['cosine']:.5f}, worst {f['worst_cosine']:.5f}, top-1 agreement " \
               f"{100 * f['agreement_top1']:.0f}%"

    def row(name, x, layers):
        cells = [name, str(layers), f"{100 * x['int8_mac_share']:.1f}%", fig(x["figures"])]
        if simulated:
            cells.append(fig(x["runtime_figures"]))
        return "| " + " | ".join(cells + ([_ms(x), _speed(x)] if timed else [])) + " |"
    timed = bool(result["fp32"]["latency"])
    lines = [f"Int8 layer search on {m['target']}, MobileViT {m['variant']} at {m['size']}, weights: "
             f"{m['weights']}; budget {m['budget']} on {m['heldout_images']} held-out photos, calibration on "
             f"{m['calibration_images']} others ({cpu['cpu']}, family {cpu['cpu_family']} model "
             f"{cpu['cpu_model']}, int8 extensions: {ext}; {m['created']}). Wall time: per-layer drift "
             f"{m['sensitivity_seconds']:.0f} s, timing {m['savings_seconds']:.0f} s, search "
             f"{m['search_seconds']:.0f} s "
             f"({len(s['evaluations'])} sets measured), whole run {m['seconds']:.0f} s.", ""]
    if simulated:
        lines += [f"Drift measured in {m['measured_in']}; the searched and the recipe's sets are also lowered and "
                  f"measured in {m['runtime']} (\"in the runtime\"): how well the simulation predicts them.", ""]
    lines += [f"Latency: median of {RUNS} runs at 1 thread, interleaved; speed-up = fp32 median / row median "
              "[bootstrap 95% CI]." if timed else
              f"Not timed: {m['runtime']} computes the target's numbers, not its speed (it does not run on this "
              "machine).", "",
              ("| int8 set | layers in float | MACs in int8 | held-out figures | "
               + ("in the runtime | " if simulated else "") + ("median ms | speed-up over fp32 |" if timed else ""))
              .rstrip(),
              "|---|---|---|---|" + ("---|" if simulated else "") + ("---|---|" if timed else ""),
              row(f"searched ({'meets' if s['met'] else 'MISSES'} the budget)", s, len(s["float_layers"])),
              row("fixed recipe", r, len(r["float_layers"])),
              (f"| fp32 | all | 0% | - | {'- | ' if simulated else ''}"
               + (f"{_ms(result['fp32'])} | 1 |" if timed else "")).rstrip(),
              "", "Layers returned to float by the search, in order: "
              + (", ".join(f"`{n}`" for n in s["float_layers"]) or "none") + ".", "",
              ("Ranking: first the layers whose int8 measured no faster (they stay float), then the most drift per "
               f"millisecond saved ({m.get('timed_by', KIND_TIMING)}). Per kind:"
               if m.get("objective", "speed") == "speed" else
               "Ranking (objective macs: the most multiply-accumulates in int8, nothing timed): the most drift per "
               "multiply-accumulate first. Per kind:"), "",
              "| kind | layers | MAC share | saving when int8 (ms) | layers float in the searched set |",
              "|---|---|---|---|---|"]
    kinds: dict[str, list[dict]] = {}
    for layer in result["layers"]:
        kinds.setdefault(layer["kind"], []).append(layer)
    chosen = set(s["float_layers"])
    for kind, rows in kinds.items():
        lines.append(f"| {kind} | {len(rows)} | {100 * sum(x['mac_share'] for x in rows):.1f}% | "
                     f"{_saving(rows)} | {sum(x['layer'] in chosen for x in rows)} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.int8search", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", help="checkpoint (any format mobilevit.checkpoints reads); default: synthetic")
    p.add_argument("--variant", default="xx_small", choices=["xx_small", "x_small", "small"])
    searchable = [t for t, c in TARGETS.items() if c.int8_search]
    p.add_argument("--target", default=None, choices=searchable,
                   help=f"a target with a layer search (default: {searchable[0]}, the first registered)")
    p.add_argument("--images", help="your photos: the first --num-images are held out, the rest calibrate; "
                                    "'digits': the digits validation split (data.datasets, for the digits checkpoint)")
    p.add_argument("--num-images", type=int, default=16)
    p.add_argument("--int8-budget", default=DEFAULT_BUDGET, help="cosine=C or top1=P (default cosine=0.999)")
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--stem", default="int8search", help="result file names: STEM.{json,md} in --out")
    p.add_argument("--int8-objective", default=None, choices=OBJECTIVES,
                   help="what the search maximises: speed (measured here; the default where the runtime is timed "
                        "here) or macs (the MAC share in int8)")
    a = p.parse_args(argv)
    try:
        budget = parse_budget(a.int8_budget)
        if budget.metric == "top1":
            raise ExportConfigError(f"--int8-budget {a.int8_budget}: a top-1 budget needs labelled photos; this "
                                    "command measures logit cosine only (give cosine=C)")
    except ExportConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    from data.photos import load_folder, photo_variants
    from data.synthetic import synthetic_model
    from export.convert import calibration_photos
    from mobilevit import get_config
    from mobilevit.checkpoints import load_checkpoint, load_model
    from mobilevit.preprocess import preprocess

    pool, noun = None, "photos"  # the user's images: the first --num-images are held out, the rest calibrate
    if a.images == "digits":  # already the model's input: BGR in [0, 1] at --size
        from data.datasets import digits

        pool, noun = digits(size=a.size).val.images.numpy(), "validation images"
        pool = pool[np.random.default_rng(0).permutation(len(pool))]  # every class in the held-out images
    elif a.images:
        pool = load_folder(a.images)
    if pool is not None and len(pool) <= a.num_images:  # checked before any model is built
        print(f"error: --images {a.images} has {len(pool)} {noun}: give --num-images below {len(pool)} (the rest "
              "calibrate)", file=sys.stderr)
        return EXIT_BAD_INPUT
    if a.weights:
        ckpt = load_checkpoint(a.weights)
        model, variant, origin = load_model(a.weights, ckpt.variant), ckpt.variant, f"{Path(a.weights).name} " \
                                                                                    f"({ckpt.format})"
        cfg = get_config(variant, num_classes=ckpt.num_classes)
    else:
        model, variant, origin = synthetic_model(a.variant), a.variant, "synthetic-calibrated"
        cfg = get_config(variant)
    if a.images == "digits":
        heldout, calibration = pool[:a.num_images], pool[a.num_images:a.num_images + CALIBRATION_DIGITS]
    elif a.images:
        heldout = preprocess(pool[:a.num_images], cfg, a.size).numpy()
        calibration = preprocess(pool[a.num_images:], cfg, a.size).numpy()
    else:
        heldout = preprocess(photo_variants(a.num_images, seed=VALIDATION_SEED), cfg, a.size).numpy()
        calibration = calibration_photos(cfg, a.size)
    target = a.target or searchable[0]
    with tempfile.TemporaryDirectory(prefix="int8search-") as tmp:
        try:
            result = run(model, variant, a.size, heldout, calibration, a.int8_budget, Path(tmp), target,
                         origin=origin, objective=a.int8_objective)
        except ExportConfigError as e:  # an objective the target cannot measure here
            print(f"error: {e}", file=sys.stderr)
            return EXIT_BAD_INPUT
    result["meta"] |= run_meta("python -m benchmarks.int8search", argv)
    write_result(a.out, a.stem, result, render(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
