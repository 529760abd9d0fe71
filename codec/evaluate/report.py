"""The evaluation's outputs, from its rows: per_image.csv, results-<method>.json in compressai's
results format (so `python -m compressai.utils.plot -f results-*.json` plots them), bd_rate.md /
bd_rate.json, bd_per_image.md / bd_per_image.json (each method against one anchor on each image
alone, so an outlier image shows; codec/evaluate/bdrate.py) and rd-<metric>.png.

Every metric of the registry (codec/evaluate/metrics.py) gets a CSV column and a JSON key; a metric
that could not run anywhere (no local weights) is left out of the JSON and named in its description.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from codec.evaluate import baselines, metrics
from codec.evaluate.bdrate import bd_markdown, bd_tables, msssim_db, per_image_markdown, per_image_tables
from codec.evaluate.compare import OURS

LABELS = {"ours": "Ours (learned adapter)", "ours-analytic": "Ours (analytic adapter)", **baselines.LABELS}
CSV_COLUMNS = ["image", "method", "target_bpp", "aimed_bpp", "bpp", "within_aim", "knob", "encode_s", "decode_s"]


@dataclass
class Report:
    results: dict  # method -> compressai results JSON
    tables: dict  # bd_tables
    anchor: str  # of the per-image BD tables
    plots: list[Path]
    unavailable: list[str]  # metrics without local weights


def _mean(values):
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


def method_results(rows, set_scores, methods, targets) -> dict:
    """compressai-style results per method: one point per target, the mean over images."""
    out = {}
    for method in methods:
        res = {"bpp": [], "target_bpp": [], "encoding_time": [], "decoding_time": [], "images_within_aim": []}
        for metric in metrics.METRICS.values():
            res[metric.json_key] = []
        for target in targets:
            sel = [r for r in rows if r.method == method and r.target_bpp == target]
            res["target_bpp"].append(target)
            res["bpp"].append(_mean([r.bpp for r in sel]))
            res["encoding_time"].append(_mean([r.encode_s for r in sel]))
            res["decoding_time"].append(_mean([r.decode_s for r in sel]))
            res["images_within_aim"].append(sum(r.reached for r in sel))
            for name, metric in metrics.PER_IMAGE.items():
                res[metric.json_key].append(_mean([r.scores.get(name) for r in sel]))
            for name, metric in metrics.PER_SET.items():
                res[metric.json_key].append(set_scores.get((method, target), {}).get(name))
        unavailable = [m.json_key for m in metrics.METRICS.values() if all(v is None for v in res[m.json_key])]
        for key in unavailable:
            del res[key]
        out[method] = {
            "name": method,
            "description": LABELS[method] + (f"; unavailable (no local weights): {', '.join(unavailable)}" if unavailable else ""),
            "results": res,
        }
    return out


def write_csv(rows, path: Path) -> None:
    names = list(metrics.PER_IMAGE)
    missing = {name: "n/a" if metrics.available(name) else "unavailable" for name in names}
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow([*CSV_COLUMNS, *names])
        for r in rows:
            scores = [missing[m] if r.scores.get(m) is None else f"{r.scores[m]:.6g}" for m in names]
            w.writerow([r.image, r.method, r.target_bpp, f"{r.aimed_bpp:.6f}", f"{r.bpp:.6f}", r.reached, f"{r.knob:.6g}",
                        f"{r.encode_s:.4f}", f"{r.decode_s:.4f}", *scores])


def plot(results: dict, out: Path) -> list[Path]:
    """One RD plot per metric that has values: rd-psnr.png, rd-ms-ssim.png, rd-swd.png, ..."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    for metric in metrics.METRICS.values():
        key = metric.json_key
        curves = {m: r for m, r in results.items() if key in r["results"]}
        if not curves:
            continue
        transform = msssim_db if metric.name == "ms_ssim" else float
        label = metric.label + (" (dB)" if metric.name == "ms_ssim" else "")
        label += "" if metric.higher_is_better else " (lower is better)"
        fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=120)
        for method, r in curves.items():
            points = [(b, transform(v)) for b, v in zip(r["results"]["bpp"], r["results"][key]) if v is not None]
            style = "-o" if method in OURS else "--s" if method == "naive" else ":^"
            ax.plot(*zip(*points), style, label=LABELS[method], linewidth=1.6, markersize=4)
        ax.set_xlabel("bits per pixel (file size, container included)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        fig.tight_layout()
        path = out / f"rd-{key.replace('-rgb', '')}.png"
        fig.savefig(path)
        plt.close(fig)
        written.append(path)
    return written


def write(rows, set_scores, methods, targets, out: Path) -> Report:
    results = method_results(rows, set_scores, methods, targets)
    write_csv(rows, out / "per_image.csv")
    for method, res in results.items():
        (out / f"results-{method}.json").write_text(json.dumps(res, indent=2) + "\n")
    tables = bd_tables(results)
    (out / "bd_rate.json").write_text(json.dumps(tables, indent=2) + "\n")
    (out / "bd_rate.md").write_text(bd_markdown(tables))
    anchor = per_image_anchor(methods)
    by_image = {image: method_results([r for r in rows if r.image == image], {}, methods, targets)
                for image in dict.fromkeys(r.image for r in rows)}
    per_image = per_image_tables(by_image, anchor)
    (out / "bd_per_image.json").write_text(json.dumps(per_image, indent=2) + "\n")
    (out / "bd_per_image.md").write_text(per_image_markdown(per_image, anchor))
    unavailable = [name for name in metrics.METRICS if not metrics.available(name)]
    return Report(results, tables, anchor, plot(results, out), unavailable)


def per_image_anchor(methods) -> str:
    """The anchor of the per-image BD tables: the first baseline evaluated (JPEG when it is), else the first method."""
    return next((m for m in methods if m not in OURS), methods[0])
