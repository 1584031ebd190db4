"""Int8 sensitivity: quantize one layer kind at a time through each target's own int8 path, rank the kinds.

    python -m benchmarks.quant [--variant xx_small] [--targets onnx,executorch,...] [--kinds qkv,ffn]
                               [--images DIR] [--num-images 16] [--runs 30] [--threads 1] [--out DIR]

For every int8 recipe in ``export.config.INT8_RECIPES`` (one per target), this converts, through
``export.convert`` like every other artifact:

* ``fp32``: the target's float artifact (the speed reference);
* ``all``: every layer kind int8 (no float exception);
* one row per kind of ``mobilevit.layers.KINDS``: that kind alone int8, everything else float;
* ``recipe``: the committed recipe;

then measures each in the target's runtime on validation photos that calibration never saw (drift
from PyTorch fp32: mean and worst cosine, max abs over max |logit|, top-1 agreement) and, where the
runtime can be timed here, interleaved latency at ``--threads`` with the speed-up over ``fp32`` (ratio of
medians with a bootstrap 95% interval). Each kind's share of the multiply-accumulates bounds what
quantizing it can buy. Writes ``quant.json`` (numbers), ``quant.md`` (the README block) and
``quant.png`` to ``--out``; targets already in ``quant.json`` (same variant, photos and settings) that
this run did not measure are kept, so one target can be re-measured alone.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from data.synthetic import synthetic_model
from export import convert
from export.config import INT8_RECIPES, TARGETS, tolerance
from export.convert import CALIBRATION_IMAGES, calibration_photos, with_target_defaults
from export.int8 import float_kinds as kept_float
from mobilevit.atomic import write_atomic, write_text
from mobilevit.layers import KINDS, check_kinds, layer_macs, layers

from .harness import _say, artifact_entry, machine_info, measure_drift, measure_latency
from .stats import ratio_ci

RESULTS = Path(__file__).parent / "results"
VALIDATION_SEED = 0  # the photos drift is measured on (calibration uses export.convert's own pool and seed)


def kind_shares(model) -> dict[str, float]:
    """Each kind's fraction of the model's multiply-accumulates."""
    macs = layer_macs(model)
    kinds = {layer.name: layer.kind for layer in layers(model)}
    total = sum(macs.values())
    shares = dict.fromkeys(KINDS, 0.0)
    for name, n in macs.items():
        shares[kinds[name]] += n / total
    return shares


def plan(target: str, kinds: tuple[str, ...]) -> list[tuple[str, tuple[str, ...] | None]]:
    """``(row, float_kinds)`` for one target: fp32 (``None``: the float precision), all, each kind, recipe."""
    everything = tuple(KINDS)
    rows = [("fp32", None), ("all", ())]
    rows += [(k, tuple(o for o in everything if o != k)) for k in kinds]
    rows.append(("recipe", kept_float(target, _precision(target), None)))
    return rows


def _recipe(target: str):
    return next(r for (t, _), r in INT8_RECIPES.items() if t == target)


def _precision(target: str) -> str:
    return next(p for (t, p) in INT8_RECIPES if t == target)


def _float_precision(target: str) -> str:
    return "fp32" if "fp32" in TARGETS[target].precisions else TARGETS[target].default_precision


def _row_plan(target: str, kinds: tuple[str, ...], shares: dict[str, float]) -> list[dict]:
    """One record per row of :func:`plan`: its precision, float kinds and share of MACs in int8."""
    precision = _precision(target)
    return [{"row": row, "precision": precision if fk is not None else _float_precision(target),
             "float_kinds": list(fk) if fk is not None else None,
             "int8_macs_share": sum(s for k, s in shares.items() if k not in fk) if fk is not None else 0.0}
            for row, fk in plan(target, kinds)]


def convert_row(model, target: str, record: dict, calibration: np.ndarray, images: np.ndarray, work: Path):
    """Convert one row through ``export.convert`` and measure its drift; ``(record, entry or None)``."""
    base = with_target_defaults(model, target)
    extra = {} if record["float_kinds"] is None else {"float_kinds": tuple(record["float_kinds"])}
    t0 = time.perf_counter()
    try:
        path = convert(base, target, record["precision"], work / target / record["row"], size=images.shape[-1],
                       calibration=calibration, **TARGETS[target].logits_options, **extra)
    except Exception as e:  # a conversion that fails is a row of the table, not the end of the run
        _say(f"  {target} {record['row']}: conversion failed: {type(e).__name__}: {str(e)[:200]}")
        return {**record, "error": f"{type(e).__name__}: {e}"}, None
    record = {**record, "convert_s": round(time.perf_counter() - t0, 1)}
    entry = artifact_entry(target, record["precision"], "ours", ("", ""), path, prefix=f"{record['row']}: ")
    measure_drift([entry], model, images)
    return record, entry


def _row_on_a_worker(model, target: str, record: dict, calibration: np.ndarray, images: np.ndarray):
    """A Ray task: :func:`convert_row` in a temporary folder; the artifact comes back packed with its figures."""
    from .cluster import pack

    with tempfile.TemporaryDirectory(prefix="quant-row-") as tmp:
        record, entry = convert_row(model, target, record, calibration, images, Path(tmp))
        if entry is None:
            return record, None
        return record, {"name": Path(entry.artifact).name, "blob": pack(Path(entry.artifact)),
                        "results": entry.results, "error": entry.error}


def _rows_on_cluster(cluster, model, target, records, calibration, images, work) -> list:
    """Every row as one Ray task (conversion and drift); the artifacts land in ``work`` for the timing."""
    from .cluster import unpack

    shared = [cluster.ray.put(v) for v in (model, calibration, images)]  # once, not once per task
    done = cluster.map(_row_on_a_worker, [(shared[0], target, r, shared[1], shared[2]) for r in records])
    out = []
    for record, shipped in done:
        if shipped is None:
            out.append((record, None))
            continue
        folder = work / target / record["row"]
        folder.mkdir(parents=True, exist_ok=True)
        path = unpack(shipped["blob"], shipped["name"], folder)
        entry = artifact_entry(target, record["precision"], "ours", ("", ""), path, prefix=f"{record['row']}: ")
        entry.results.update(shipped["results"])
        entry.error = entry.error or shipped["error"]
        out.append((record, entry))
    return out


def run_target(model, target: str, kinds: tuple[str, ...], calibration: np.ndarray, images: np.ndarray,
               work: Path, *, threads: int, runs: int, shares: dict[str, float], cluster=None) -> dict:
    """Convert and measure every row of :func:`plan` for ``target``: conversions and drift here, or one Ray
    task per row on ``cluster``; latency here afterwards (timings need the machine to themselves)."""
    precision = _precision(target)
    records = _row_plan(target, kinds, shares)
    if cluster is None:
        done = [convert_row(model, target, r, calibration, images, work) for r in records]
    else:
        done = _rows_on_cluster(cluster, model, target, records, calibration, images, work)
    rows = [record for record, _ in done]
    entries = [entry for _, entry in done if entry is not None]
    for record, entry in done:
        if entry is not None:
            record["_entry"] = entry
    measure_latency(entries, [threads], runs, 3, images[:1])
    fp32 = next((r["_entry"] for r in rows if r["row"] == "fp32" and "_entry" in r), None)
    ref = (fp32.results.get("latency") or {}).get(str(threads)) if fp32 else None
    for record in rows:
        entry = record.pop("_entry", None)
        if entry is None:
            continue
        record["runtime"] = f"{entry.runtime} {entry.version}"
        record["drift"] = entry.results.get("drift")
        if entry.error:
            record["error"] = entry.error
        lat = (entry.results.get("latency") or {}).get(str(threads))
        if lat:
            record["latency"] = lat
            if ref:
                record["speedup"] = ratio_ci(ref["samples_ms"], lat["samples_ms"])
        else:
            record["latency_skip"] = entry.latency_skip
        record["artifact_bytes"] = _size(Path(entry.artifact))
    tol = tolerance(target, precision)
    recipe = _recipe(target)
    return {"precision": precision, "recipe": {**recipe.__dict__, "float_kinds": list(recipe.float_kinds)},
            "tolerance": tol.__dict__, "rows": rows}


def _size(path: Path) -> int:
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size if path.exists() else 0


def ranking(result: dict) -> list[tuple[str, float]]:
    """Kinds by the drift each causes alone (1 - mean cosine), worst first."""
    scored = [(r["row"], 1.0 - r["drift"]["cosine_mean"]) for r in result["rows"]
              if r["row"] in KINDS and r.get("drift")]
    return sorted(scored, key=lambda kv: -kv[1])


def run(variant: str, targets: list[str], kinds: tuple[str, ...], *, images_dir: str | None, num_images: int,
        runs: int, threads: int, work: Path, cluster=None) -> dict:
    from data.photos import load_folder, photo_variants
    from mobilevit.preprocess import preprocess

    model = synthetic_model(variant)
    size = 256
    if images_dir:  # the user's photos: validate on the first ones, calibrate on the rest
        photos = load_folder(images_dir, limit=num_images + CALIBRATION_IMAGES)
        if len(photos) <= num_images:
            raise SystemExit(f"--images {images_dir} holds {len(photos)} images: need more than {num_images} "
                             "(validation) so that calibration uses other photos")
        images = preprocess(photos[:num_images], model.cfg, size).numpy()
        calibration = preprocess(photos[num_images:], model.cfg, size).numpy()
        sources = {"validation": f"{images_dir} (first {num_images})",
                   "calibration": f"{images_dir} (the next {len(photos) - num_images})"}
    else:
        images = preprocess(photo_variants(num_images, seed=VALIDATION_SEED), model.cfg, size).numpy()
        calibration = calibration_photos(model.cfg, size)
        sources = {"validation": f"{num_images} views of the validation photo pool (data.photos.base_photos)",
                   "calibration": f"{len(calibration)} views of the calibration pool "
                                  "(data.photos.calibration_base_photos; no photo in common)"}
    shares = kind_shares(model)
    result = {"command": "python -m benchmarks.quant " + " ".join(sys.argv[1:]),
              "created": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
              "machine": machine_info(), "variant": variant, "size": size, "weights": "synthetic-calibrated",
              "threads": threads, "runs": runs, "images": sources, "kinds": {k: KINDS[k][0] for k in KINDS},
              "macs_share": shares, "targets": {}}
    for target in targets:
        _say(f"{target}: {len(kinds) + 3} conversions ...")
        t0 = time.perf_counter()
        result["targets"][target] = run_target(model, target, kinds, calibration, images, work, threads=threads,
                                               runs=runs, shares=shares, cluster=cluster)
        result["targets"][target]["seconds"] = round(time.perf_counter() - t0, 1)
        result["targets"][target]["created"] = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        result["targets"][target]["command"] = result["command"]
    return result


def merge(previous: dict | None, result: dict) -> dict:
    """``result`` plus the targets of ``previous`` it did not measure (same variant, weights, photos and
    settings only), so one target can be re-measured without redoing the others; each target keeps the
    command and time that measured it."""
    same = ("variant", "size", "weights", "threads", "runs", "images")
    if not previous or any(previous.get(k) != result.get(k) for k in same):
        return result
    targets = {t: v for t, v in previous.get("targets", {}).items() if t not in result["targets"]}
    return {**result, "targets": {**targets, **result["targets"]}}


# ------------------------------------------------------------------------------------------------
# rendering
# ------------------------------------------------------------------------------------------------

def _cell_speed(r: dict) -> str:
    s = r.get("speedup")
    if not s:
        return "—" if r.get("row") != "fp32" else "1.00"
    return f"{s['value']:.2f} [{s['ci95_low']:.2f}, {s['ci95_high']:.2f}]"


def _row_line(r: dict, tol) -> str:
    name = {"fp32": "fp32 (reference)", "all": "**all kinds int8**", "recipe": "**recipe**"}.get(r["row"], r["row"])
    if r.get("error"):
        return f"| {name} | — | — | — | — | — | — | failed: {r['error'][:80]} |"
    d = r.get("drift") or {}
    ok = ""
    if r["row"] != "fp32" and d:
        ok = "ok" if (d["max_abs_rel"] <= tol.max_abs_rel and d["cosine_min"] >= tol.cosine_min
                      and d["top1_agreement"] >= tol.top1_min) else "over"
    return (f"| {name} | {r['int8_macs_share']:.0%} | {d.get('cosine_mean', float('nan')):.5f} | "
            f"{d.get('cosine_min', float('nan')):.5f} | {d.get('max_abs_rel', float('nan')):.3f} | "
            f"{d.get('top1_agreement', float('nan')):.0%} | {_cell_speed(r)} | {ok} |")


def render_markdown(result: dict) -> str:
    size = f"{result['size']}x{result['size']}"
    commands = sorted({res.get("command", result["command"]) for res in result["targets"].values()})
    out = [f"Int8 sensitivity: {', '.join(f'`{c}`' for c in commands)} (finished {result['created']}), "
           f"{result['machine']['cpu']} "
           f"({result['machine']['logical_cores']} cores), MobileViT {result['variant']} at {size}, "
           f"weights: {result['weights']}; drift vs PyTorch fp32 on {result['images']['validation']}; calibration on "
           f"{result['images']['calibration']}; speed-up = fp32 median / row median at {result['threads']} thread "
           f"[bootstrap 95% CI], {result['runs']} interleaved runs per row.", "",
           "Each kind row quantizes that kind alone (everything else float); kinds are sorted by the drift they "
           "cause. int8 MACs = the share of multiply-accumulates that row runs in int8 (Core ML: coremltools never "
           "quantizes matmul, so its attn_matmul row is fp16). tol: the row against the target's int8 row of "
           "`export.config.TOLERANCES` (worst cosine, max abs, top-1).", ""]
    for target, res in result["targets"].items():
        recipe = res["recipe"]
        out += [f"### {target} {res['precision']} (recipe: float {', '.join(recipe['float_kinds']) or 'nothing'}; "
                f"calibration {recipe['calibration']})", "",
                "| row | int8 MACs | cosine mean | cosine worst | max abs / max logit | top-1 "
                "| speed-up vs fp32 | tol |",
                "|---|---|---|---|---|---|---|---|"]
        order = {name: i for i, (name, _) in enumerate(ranking(res))}
        fixed = [r for r in res["rows"] if r["row"] in ("fp32", "all", "recipe")]
        kinds = sorted((r for r in res["rows"] if r["row"] in KINDS), key=lambda r: order.get(r["row"], 99))
        tol = tolerance(target, res["precision"])  # today's table, so a tightened limit shows here
        out += [_row_line(r, tol) for r in fixed + kinds]
        ranked = [k for k, _ in ranking(res)[:4]]
        out += ["", f"Most sensitive kinds: {', '.join(ranked)}.", ""]
    return "\n".join(out).rstrip() + "\n"


def plot(result: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    targets = list(result["targets"])
    kinds = list(KINDS)
    fig, ax = plt.subplots(figsize=(9, 0.35 * len(kinds) * max(1, len(targets)) / 1.5 + 1.5))
    height = 0.8 / max(1, len(targets))
    for i, target in enumerate(targets):
        rows = {r["row"]: r for r in result["targets"][target]["rows"]}
        vals = [max(1.0 - rows[k]["drift"]["cosine_mean"], 1e-7) if rows.get(k, {}).get("drift") else np.nan
                for k in kinds]
        ax.barh(np.arange(len(kinds)) + i * height, vals, height, label=target)
    ax.axvline(1e-3, color="k", ls="--", lw=1, label="cosine 0.999")
    ax.set_xscale("log")
    ax.set_yticks(np.arange(len(kinds)) + 0.4 - height / 2, kinds)
    ax.invert_yaxis()
    ax.set_xlabel("1 - mean cosine vs PyTorch (that kind alone int8)")
    ax.set_title(f"int8 sensitivity by layer kind, MobileViT {result['variant']}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    write_atomic(path, lambda f: fig.savefig(f, format="png", dpi=110))
    plt.close(fig)
    return path


def write_all(result: dict, out: Path, stem: str = "quant") -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / f"{stem}.json", "md": out / f"{stem}.md", "png": out / f"{stem}.png"}
    write_text(paths["json"], json.dumps(result, indent=1, default=float) + "\n")
    write_text(paths["md"], render_markdown(result))
    plot(result, paths["png"])
    return paths


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.quant", description=__doc__.split("\n\n")[0])
    p.add_argument("--variant", default="xx_small", choices=["xx_small", "x_small", "small"])
    p.add_argument("--targets", default=",".join(dict.fromkeys(t for t, _ in INT8_RECIPES)),
                   help="comma-separated targets with an int8 recipe (default: all of them)")
    p.add_argument("--kinds", default=",".join(KINDS), help="layer kinds to test one at a time (default: all)")
    p.add_argument("--images", default=None, help="folder of your own photos (first ones validate, the rest calibrate)")
    p.add_argument("--num-images", type=int, default=16, help="validation photos (default 16)")
    p.add_argument("--runs", type=int, default=30, help="timed runs per row (default 30)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--ray", nargs="?", const="local", metavar="ADDRESS",
                   help="convert and measure drift as one Ray task per row: alone, a cluster on this machine; "
                        "'auto', HOST:PORT or ray://HOST:PORT, an existing one (latency is still timed here)")
    p.add_argument("--workers", type=int, help="with --ray on this machine: its CPUs for the cluster (default all)")
    p.add_argument("--work", type=Path, default=None, help="keep the artifacts here (default: a temporary folder)")
    p.add_argument("--render", action="store_true",
                   help="only re-render quant.md and quant.png from --out's quant.json (e.g. after a tolerance change)")
    a = p.parse_args(argv)
    if a.render:
        result = json.loads((a.out / "quant.json").read_text())
        for target, res in result["targets"].items():
            res["tolerance"] = tolerance(target, res["precision"]).__dict__  # the limits the table is judged by
        print("wrote", ", ".join(str(p) for p in write_all(result, a.out).values()))
        return 0
    known = sorted({t for t, _ in INT8_RECIPES})
    targets = [t for t in a.targets.split(",") if t]
    bad = [t for t in targets if t not in known]
    if bad or not targets:
        print(f"error: --targets {a.targets!r}: choose from {', '.join(known)}", file=sys.stderr)
        return 2
    try:
        kinds = check_kinds(k for k in a.kinds.split(",") if k)
    except ValueError as e:
        print(f"error: --kinds: {e}", file=sys.stderr)
        return 2
    from .cluster import ClusterError, RayEngine

    work = a.work or Path(tempfile.mkdtemp(prefix="quant-"))
    cluster = None
    try:
        if a.ray is not None:
            cluster = RayEngine(a.ray, a.workers, log=_say)
        result = run(a.variant, targets, kinds, images_dir=a.images, num_images=a.num_images, runs=a.runs,
                     threads=a.threads, work=work, cluster=cluster)
    except ClusterError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        if cluster is not None:
            cluster.close()
        if a.work is None:
            shutil.rmtree(work, ignore_errors=True)
    previous = a.out / "quant.json"
    result = merge(json.loads(previous.read_text()) if previous.exists() else None, result)
    paths = write_all(result, a.out)
    print(render_markdown(result))
    print("wrote", ", ".join(str(p) for p in paths.values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
