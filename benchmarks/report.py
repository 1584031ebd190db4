"""Write results as numbers (JSON, CSV), render markdown from them, and draw PNG plots."""
from __future__ import annotations

import csv
import json
from pathlib import Path

TARGETS = {"onnx_fp32_vs_baseline": 0.85, "tflite_fp32_vs_baseline": 0.7, "int8_speedup": 2.0,
           "int8_top1_agreement": 0.99}


def flat_rows(result: dict) -> list[dict]:
    """One CSV row per (row, threads) with plain numeric columns."""
    out = []
    for variant in result["variants"]:
        for r in variant["rows"]:
            d = r.get("drift", {})
            base = {"variant": r["variant"], "name": r["name"], "runtime": r["runtime"], "version": r["version"],
                    "precision": r["precision"], "source": r["source"], "patches": r["patches"],
                    "attention": r["attention"], "max_abs": d.get("max_abs"), "mean_abs": d.get("mean_abs"),
                    "cosine_min": d.get("cosine_min"), "top1_agreement": d.get("top1_agreement"),
                    "top5_agreement": d.get("top5_agreement"), "within_tolerance": r.get("within_tolerance"),
                    "error": r.get("error", ""), "latency_skip": r.get("latency_skip", "")}
            lats = r.get("latency") or {"": {}}
            for threads, lat in lats.items():
                out.append({**base, "threads": int(threads) if threads else None,
                            "median_ms": lat.get("median_ms"), "iqr_ms": lat.get("iqr_ms"),
                            "p90_ms": lat.get("p90_ms"), "gflops": lat.get("gflops"),
                            "fraction_of_peak": lat.get("fraction_of_peak"), "n": lat.get("n")})
    return out


def _lat(row: dict, threads: str):
    return (row.get("latency") or {}).get(threads, {}).get("median_ms")


def target_status(variant: dict, threads: str) -> list[dict]:
    """Where our artifacts stand against the issue's targets, from this run only."""
    rows = {r["name"]: r for r in variant["rows"]}
    out = []

    def ratio(ours, base, limit, label):
        a, b = _lat(rows.get(ours, {}), threads), _lat(rows.get(base, {}), threads)
        if a is None or b is None:
            out.append({"target": label, "value": None, "limit": limit, "met": None, "note": "not measured"})
        else:
            out.append({"target": label, "value": a / b, "limit": limit, "met": a / b <= limit,
                        "note": f"{a:.2f} ms vs {b:.2f} ms"})

    ratio("onnxruntime fp32", "baseline HF onnxruntime fp32", TARGETS["onnx_fp32_vs_baseline"],
          "onnxruntime fp32 / HF baseline")
    ratio("litert fp32", "baseline HF litert fp32", TARGETS["tflite_fp32_vs_baseline"], "TFLite fp32 / HF baseline")
    best = None
    for r in variant["rows"]:
        if r["source"] != "ours" or "int8" not in r["precision"] or _lat(r, threads) is None:
            continue
        fp32 = rows.get(f"{r['name'].split()[0]} fp32")
        if fp32 is None or _lat(fp32, threads) is None:
            continue
        speed = _lat(fp32, threads) / _lat(r, threads)
        agree = r.get("drift", {}).get("top1_agreement", 0)
        if best is None or speed > best[0]:
            best = (speed, agree, r["name"])
    if best:
        out.append({"target": f"fastest int8 ({best[2]}) speed-up over its fp32", "value": best[0],
                    "limit": TARGETS["int8_speedup"], "met": best[0] >= TARGETS["int8_speedup"]
                    and best[1] >= TARGETS["int8_top1_agreement"], "note": f"top-1 agreement {best[1]:.1%}"})
    return out


def render_markdown(result: dict) -> str:
    meta = result["meta"]
    lines = [f"Benchmark: {meta['created']}, {meta['machine']['cpu']} ({meta['machine']['logical_cores']} cores), "
             f"weights: {meta['weights']}, batch 1, {meta['repeats']} interleaved repeats, drift on "
             f"{meta['images']} real photos.", ""]
    for variant in result["variants"]:
        threads = [str(t) for t in meta["threads"]]
        peak = ", ".join(f"{t} thr {variant['gemm_peak_gflops'][t]:.0f}" for t in threads)
        header = ("| runtime | precision | source | patches / attention | "
                  + " | ".join(f"ms @{t} thr (IQR)" for t in threads)
                  + " | GFLOP/s | % peak | max abs | cosine | top-1 | top-5 |")
        lines += [f"### {variant['variant']} ({variant['macs'] / 1e9:.3f} GMACs; fp32 GEMM peak GFLOP/s: {peak})", "",
                  header, "|---" * (10 + len(threads)) + "|"]
        for r in variant["rows"]:
            d = r.get("drift", {})
            lat_cells = []
            for t in threads:
                lat = (r.get("latency") or {}).get(t)
                lat_cells.append(f"{lat['median_ms']:.2f} ({lat['iqr_ms']:.2f})" + (" ⚠" if lat["spread_warning"]
                                                                                     else "") if lat else
                                 (r.get("latency_skip") or r.get("error") or "—")[:60])
            last = (r.get("latency") or {}).get(threads[-1])
            lines.append(
                f"| {r['runtime']} {r['version']} | {r['precision']} | {r['source']} | {r['patches']} / "
                f"{r['attention']} | " + " | ".join(lat_cells) + " | "
                + (f"{last['gflops']:.1f} | {last['fraction_of_peak']:.1%}" if last else "— | —") + " | "
                + (f"{d['max_abs']:.2e} | {d['cosine_min']:.5f} | {d['top1_agreement']:.0%} | "
                   f"{d['top5_agreement']:.0%}" if d else "— | — | — | —") + " |")
        for th in threads:
            lines += ["", f"Targets (from this run, {th} thread{'s' if th != '1' else ''}):", ""]
            for t in target_status(variant, th):
                state = "n/a" if t["met"] is None else ("met" if t["met"] else "NOT met")
                value = "—" if t["value"] is None else f"{t['value']:.2f}"
                lines.append(f"- {t['target']}: {value} (target {'<=' if 'speed-up' not in t['target'] else '>='} "
                             f"{t['limit']}) — {state}; {t['note']}")
        for r in variant["rows"]:
            if r.get("localization"):
                lines.append(f"- drift localisation, {r['name']}: {r['localization']['message']}")
        lines.append("")
    return "\n".join(lines)


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


def plot(result: dict, out: Path, stem: str) -> dict[str, Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    threads = str(result["meta"]["threads"][-1])
    paths = {}
    for variant in result["variants"]:
        rows = [r for r in variant["rows"] if (r.get("latency") or {}).get(threads)]
        if not rows:
            continue
        names = [r["name"] for r in rows]
        med = [r["latency"][threads]["median_ms"] for r in rows]
        err = [[r["latency"][threads]["median_ms"] - r["latency"][threads]["p25_ms"] for r in rows],
               [r["latency"][threads]["p75_ms"] - r["latency"][threads]["median_ms"] for r in rows]]
        colors = ["#999999" if r["source"] == "hf-baseline" else "#1f77b4" for r in rows]
        fig, ax = plt.subplots(figsize=(8, 0.4 * len(rows) + 1.5))
        ax.barh(names, med, xerr=err, color=colors, capsize=3)
        ax.invert_yaxis()
        ax.set_xlabel(f"latency, ms (median, IQR bars), batch 1, {threads} threads")
        ax.set_title(f"MobileViT {variant['variant']}: latency per runtime and precision (grey: HF as-is)")
        fig.tight_layout()
        p = out / f"{stem}_{variant['variant']}_latency.png"
        fig.savefig(p, dpi=110)
        plt.close(fig)
        paths[f"latency_{variant['variant']}"] = p
        fig, ax = plt.subplots(figsize=(7, 5))
        for r in rows:
            d = r.get("drift")
            if not d:
                continue
            y = max(1 - d["cosine_min"], 1e-9)
            ax.scatter(r["latency"][threads]["median_ms"], y, color="#999999" if r["source"] == "hf-baseline"
                       else "#1f77b4")
            ax.annotate(r["name"], (r["latency"][threads]["median_ms"], y), fontsize=7)
        ax.set_yscale("log")
        ax.set_xlabel(f"latency, ms (median, {threads} threads)")
        ax.set_ylabel("1 - cosine similarity to PyTorch fp32 (worst photo)")
        ax.set_title(f"MobileViT {variant['variant']}: drift vs latency")
        fig.tight_layout()
        p = out / f"{stem}_{variant['variant']}_drift_vs_latency.png"
        fig.savefig(p, dpi=110)
        plt.close(fig)
        paths[f"drift_{variant['variant']}"] = p
    return paths
