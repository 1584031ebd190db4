"""Write results as numbers (JSON, CSV), render markdown from them, and draw PNG plots."""
from __future__ import annotations

import csv
import json
from pathlib import Path

from .stats import SPREAD_WARNING

TARGETS = {"onnx_fp32_vs_baseline": 0.85, "tflite_fp32_vs_baseline": 0.7, "int8_speedup": 2.0,
           "int8_top1_agreement": 0.99}


def flat_rows(result: dict) -> list[dict]:
    """One CSV row per (row, threads) with plain numeric columns, tagged with the machine."""
    out = []
    machine = result["meta"]["machine"]
    for variant in result["variants"]:
        for r in variant["rows"]:
            d = r.get("drift", {})
            base = {"cpu": machine["cpu"], "logical_cores": machine["logical_cores"], "variant": r["variant"],
                    "name": r["name"], "runtime": r["runtime"], "version": r["version"],
                    "precision": r["precision"], "source": r["source"], "patches": r["patches"],
                    "attention": r["attention"], "max_abs": d.get("max_abs"), "mean_abs": d.get("mean_abs"),
                    "cosine_min": d.get("cosine_min"), "top1_agreement": d.get("top1_agreement"),
                    "top5_agreement": d.get("top5_agreement"), "within_tolerance": r.get("within_tolerance"),
                    "error": r.get("error", ""), "latency_skip": r.get("latency_skip", "")}
            lats = r.get("latency") or {"": {}}
            for threads, lat in lats.items():
                out.append({**base, "threads": int(threads) if threads else None,
                            "median_ms": lat.get("median_ms"), "iqr_ms": lat.get("iqr_ms"),
                            "p25_ms": lat.get("p25_ms"), "p75_ms": lat.get("p75_ms"),
                            "p90_ms": lat.get("p90_ms"), "spread_warning": lat.get("spread_warning"),
                            "gflops": lat.get("gflops"),
                            "fraction_of_peak": lat.get("fraction_of_peak"), "n": lat.get("n")})
    return out


def _lat(row: dict, threads: str):
    return (row.get("latency") or {}).get(threads, {}).get("median_ms")


def target_status(variant: dict, threads: str) -> list[dict]:
    """Where our artifacts stand against the issue's targets, from this run only (``op``: how to compare)."""
    rows = {r["name"]: r for r in variant["rows"]}
    out = []

    def ratio(ours, base, limit, label):
        a, b = _lat(rows.get(ours, {}), threads), _lat(rows.get(base, {}), threads)
        if a is None or b is None:
            out.append({"target": label, "op": "<=", "value": None, "limit": limit, "met": None,
                        "note": "not measured"})
        else:
            out.append({"target": label, "op": "<=", "value": a / b, "limit": limit, "met": a / b <= limit,
                        "note": f"{a:.2f} ms vs {b:.2f} ms"})

    ratio("onnxruntime fp32", "baseline HF onnxruntime fp32", TARGETS["onnx_fp32_vs_baseline"],
          "onnxruntime fp32 / HF baseline")
    ratio("litert fp32", "baseline HF litert fp32", TARGETS["tflite_fp32_vs_baseline"],
          "TFLite fp32 / HF baseline")
    best = None
    for r in variant["rows"]:
        fp32 = rows.get(f"{r['name'].split()[0]} fp32")
        if (r["source"] != "ours" or "int8" not in r["precision"] or _lat(r, threads) is None
                or fp32 is None or _lat(fp32, threads) is None):
            continue
        speed = _lat(fp32, threads) / _lat(r, threads)
        if best is None or speed > best[0]:
            best = (speed, r.get("drift", {}).get("top1_agreement", 0.0), r["name"])
    if best is None:
        out.append({"target": "fastest int8 speed-up over its fp32", "op": ">=", "value": None,
                    "limit": TARGETS["int8_speedup"], "met": None, "note": "no int8 row measured"})
    else:
        speed, agree, name = best
        out.append({"target": f"fastest int8 ({name}) speed-up over its fp32", "op": ">=", "value": speed,
                    "limit": TARGETS["int8_speedup"],
                    "met": speed >= TARGETS["int8_speedup"] and agree >= TARGETS["int8_top1_agreement"],
                    "note": f"top-1 agreement {agree:.1%} (target >= {TARGETS['int8_top1_agreement']:.0%})"})
    return out


def _tol_cell(row: dict) -> str:
    ok = row.get("within_tolerance")
    return "—" if ok is None else ("ok" if ok else "**over**")


def _variant_table(variant: dict, threads: list[str]) -> list[str]:
    peak = ", ".join(f"{t} thr {variant['gemm_peak_gflops'][t]:.0f}" for t in threads)
    lines = [f"### {variant['variant']} ({variant['macs'] / 1e9:.3f} GMACs; "
             f"fp32 GEMM peak GFLOP/s: {peak})", "",
             "| runtime | precision | source | patches / attention | "
             + " | ".join(f"ms @{t} thr (IQR)" for t in threads)
             + f" | GFLOP/s @{threads[-1]} | % peak | max abs | mean abs | cosine | top-1 | top-5 | tol |",
             "|---" * (12 + len(threads)) + "|"]
    for r in variant["rows"]:
        d = r.get("drift", {})
        cells = []
        for t in threads:
            lat = (r.get("latency") or {}).get(t)
            if lat:
                warn = " ⚠" if lat["spread_warning"] else ""
                cells.append(f"{lat['median_ms']:.2f} ({lat['iqr_ms']:.2f}){warn}")
            else:
                cells.append((r.get("latency_skip") or r.get("error") or "—")[:60])
        last = (r.get("latency") or {}).get(threads[-1])
        lines.append(
            f"| {r['runtime']} {r['version']} | {r['precision']} | {r['source']} | {r['patches']} / "
            f"{r['attention']} | " + " | ".join(cells) + " | "
            + (f"{last['gflops']:.1f} | {last['fraction_of_peak']:.1%}" if last else "— | —") + " | "
            + (f"{d['max_abs']:.2e} | {d['mean_abs']:.2e} | {d['cosine_min']:.5f} | "
               f"{d['top1_agreement']:.0%} | {d['top5_agreement']:.0%}" if d else "— | — | — | — | —")
            + f" | {_tol_cell(r)} |")
    return lines


def torch_variants(variant: dict, threads: str) -> list[str]:
    """Whether channels-last and bf16 autocast help PyTorch eager, as median ratios to plain fp32."""
    rows = {r["precision"]: r for r in variant["rows"] if r["runtime"] == "torch"}
    base = _lat(rows.get("fp32", {}), threads)
    out = []
    for precision, label in (("fp32-cl", "channels-last"), ("bf16", "bf16 autocast")):
        ms = _lat(rows.get(precision, {}), threads)
        if base is None or ms is None:
            continue
        ratio = ms / base
        verdict = "helps" if ratio < 0.95 else ("hurts" if ratio > 1.05 else "no clear change")
        out.append(f"{label} {ms:.2f} ms = {ratio:.2f}x plain fp32 ({verdict})")
    return out


def _localisation(row: dict) -> list[str]:
    loc = row["localization"]
    lines = [f"- **{row['name']}**: {loc['message']}" + (f" ({loc['method']})" if loc.get("method") else "")]
    if loc.get("points"):
        lines.append("  " + "; ".join(f"{p['point']}: cos {p['cosine_min']:.4f}, rel {p['max_abs_rel']:.2g}"
                                      + ("" if p["ok"] else " ✗") for p in loc["points"]))
    if loc.get("builtin_kernels_logits"):
        b = loc["builtin_kernels_logits"]
        lines.append(f"  logits with the built-in kernels (no XNNPACK): cos {b['cosine_min']:.4f}, "
                     f"top-1 {b['top1_agreement']:.0%}")
    return lines


def _tolerance_table(result: dict) -> list[str]:
    tols = {(r["target"], r["precision"]): r["tolerance"] for v in result["variants"] for r in v["rows"]
            if r.get("tolerance")}
    if not tols:
        return []
    lines = ["Tolerances (from `export.config.TOLERANCES`, the table every validation uses; per-stage "
             "localisation applies the same limits without top-1):", "",
             "| target | precision | max abs / max abs(logit) | cosine (worst photo) | top-1 agreement |",
             "|---|---|---|---|---|"]
    for key, t in sorted(tols.items()):
        lines.append(f"| {key[0]} | {key[1]} | {t['max_abs_rel']:g} | {t['cosine_min']:g} | "
                     f"{t['top1_min']:.0%} |")
    return lines + [""]


PHONES = ("iPhone: Core ML latency needs Apple hardware. Open the `.mlpackage` in Xcode, select the "
          "*Performance* tab, add a report for a connected device and compute units (All / CPU+NE / CPU); "
          "it shows load, first and median prediction times and the compute unit of every op.")


def _phones(result: dict) -> list[str]:
    android = result["meta"].get("android") or {}
    lines = ["Phones:", ""]
    measured = [(v["variant"], r) for v in result["variants"] for r in v["rows"] if r.get("android")]
    if measured:
        lines += [f"- Android ({measured[0][1]['android']['device']}, TFLite `benchmark_model`, XNNPACK):"]
        for variant, r in measured:
            avg = r["android"].get("inference_avg_us")
            lines.append(f"  - {variant} {r['name']}: "
                         + ("no timing in its output" if avg is None else f"{avg / 1e3:.2f} ms avg"))
    else:
        lines.append(f"- Android (TFLite `benchmark_model` over adb): {android.get('reason') or 'not run'}")
    return lines + [f"- {PHONES}", ""]


def render_markdown(result: dict) -> str:
    meta = result["meta"]
    threads = [str(t) for t in meta["threads"]]
    machine = meta["machine"]
    lines = [f"Benchmark: {meta['created']}, {machine['cpu']} ({machine['logical_cores']} cores), "
             f"weights: {meta['weights']}, batch 1, {meta['repeats']} interleaved repeats per thread count, "
             f"drift vs PyTorch fp32 on {meta['images']} real photos; {meta.get('seconds', 0):.0f} s.", "",
             f"Latency: median (IQR) in ms; ⚠ = IQR over {SPREAD_WARNING:.0%} of the median (noisy). "
             "tol: drift within the row's tolerance (below).", ""]
    for variant in result["variants"]:
        lines += _variant_table(variant, threads)
        for th in threads:
            lines += ["", f"Targets (from this run, {th} thread{'s' if th != '1' else ''}):", ""]
            for t in target_status(variant, th):
                state = "n/a" if t["met"] is None else ("met" if t["met"] else "NOT met")
                value = "—" if t["value"] is None else f"{t['value']:.2f}"
                lines.append(f"- {t['target']}: {value} (target {t['op']} {t['limit']}) — {state}; "
                             f"{t['note']}")
            helps = torch_variants(variant, th)
            if helps:
                lines.append(f"- PyTorch eager: {'; '.join(helps)}")
        located = [r for r in variant["rows"] if r.get("localization")]
        if located:
            lines += ["", "Drift localisation (rows over their tolerance):", ""]
            for r in located:
                lines += _localisation(r)
        lines.append("")
    return "\n".join(lines + _tolerance_table(result) + _phones(result))


def write_all(result: dict, out: Path, stem: str = "bench") -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / f"{stem}.json", "csv": out / f"{stem}.csv", "md": out / f"{stem}.md"}
    paths["json"].write_text(json.dumps(result, indent=1) + "\n")
    rows = flat_rows(result)
    with open(paths["csv"], "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    paths["md"].write_text(render_markdown(result))
    paths.update(plot(result, out, stem))
    return paths


def _colour(row: dict) -> str:
    return "#999999" if row["source"] == "hf-baseline" else "#1f77b4"


def _save(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot(result: dict, out: Path, stem: str) -> dict[str, Path]:
    """Per variant: latency per row and thread count (median, IQR bars); drift vs latency (last count)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    all_threads = [str(t) for t in result["meta"]["threads"]]
    last = all_threads[-1]
    paths = {}
    for variant in result["variants"]:
        rows = [r for r in variant["rows"] if r.get("latency")]
        if not rows:
            continue
        name = variant["variant"]
        fig, ax = plt.subplots(figsize=(8.5, 0.3 * len(rows) * len(all_threads) + 1.6))
        height = 0.8 / len(all_threads)
        for i, t in enumerate(all_threads):
            lats = [r["latency"].get(t) for r in rows]
            y = np.arange(len(rows)) + (i - (len(all_threads) - 1) / 2) * height
            med = [lat["median_ms"] if lat else 0.0 for lat in lats]
            err = [[lat["median_ms"] - lat["p25_ms"] if lat else 0.0 for lat in lats],
                   [lat["p75_ms"] - lat["median_ms"] if lat else 0.0 for lat in lats]]
            ax.barh(y, med, height=height, xerr=err, capsize=2, color=[_colour(r) for r in rows],
                    alpha=1.0 - 0.45 * i / max(1, len(all_threads) - 1),
                    label=f"{t} thread{'s' * (t != '1')}")
        ax.set_yticks(np.arange(len(rows)), [r["name"] for r in rows])
        ax.invert_yaxis()
        ax.legend(loc="lower right", fontsize=8)
        ax.set_xlabel("latency, ms (median; bars: IQR), batch 1")
        ax.set_title(f"MobileViT {name}: latency per runtime and precision (grey: HF as-is)")
        paths[f"latency_{name}"] = _save(fig, out / f"{stem}_{name}_latency.png")
        fig, ax = plt.subplots(figsize=(7, 5))
        for r in rows:
            d, lat = r.get("drift"), r["latency"].get(last)
            if not d or not lat:
                continue
            y = max(1 - d["cosine_min"], 1e-9)
            ax.scatter(lat["median_ms"], y, color=_colour(r))
            ax.annotate(r["name"], (lat["median_ms"], y), fontsize=7)
        ax.set_yscale("log")
        ax.set_xlabel(f"latency, ms (median, {last} threads)")
        ax.set_ylabel("1 - cosine similarity to PyTorch fp32 (worst photo)")
        ax.set_title(f"MobileViT {name}: drift vs latency")
        paths[f"drift_{name}"] = _save(fig, out / f"{stem}_{name}_drift_vs_latency.png")
    return paths
