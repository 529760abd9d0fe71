"""Rate-distortion evaluation of the codec and the baselines over a folder of images.

    python -m codec.evaluate --data DIR --methods ours,ours-analytic,naive,jpeg,webp,avif,heic \
        --bpp 0.05,0.1,0.2,0.4 --out DIR [--backbone demo] [--adapter PATH] [--images a.png,b.png]
        [--max-images N] [--naive-train DIR]

For every image and target bpp, each method's real file size (bpp), PSNR and MS-SSIM, plus
LPIPS and DISTS per image and patch FID / KID per rate point where their weights are on disk
(otherwise "unavailable"; see codec/evaluate/metrics.py). The baselines are run at the bpp our codec
reached on that image (closest without going over), and report the bpp they actually reached.

Writes into --out: per_image.csv, results-<method>.json (compressai's results format: mean over
images per rate point; "images_within_aim" counts the images whose file is not above the bpp
aimed at), rd-<metric>.png, bd_rate.md / bd_rate.json (Bjontegaard deltas).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from codec.data.photos import VALIDATION_PHOTOS
from codec.evaluate import baselines, metrics
from codec.evaluate.bdrate import bd_markdown, bd_tables, msssim_db

OURS = ("ours", "ours-analytic")
METHODS = OURS + baselines.ALL_METHODS
LABELS = {"ours": "Ours (learned adapter)", "ours-analytic": "Ours (analytic adapter)", **baselines.LABELS}
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff", ".bmp")
PER_IMAGE_METRICS = ("psnr", "ms_ssim", "lpips", "dists")
SET_METRICS = ("fid", "kid")
# compressai's key names in results JSON
JSON_KEYS = {"psnr": "psnr-rgb", "ms_ssim": "ms-ssim-rgb", "lpips": "lpips", "dists": "dists", "fid": "fid", "kid": "kid"}


# ----------------------------------------------------------------------------------------------
# Running the methods


@dataclass
class Row:
    image: str
    method: str
    target_bpp: float
    aimed_bpp: float  # the target for ours; the bpp ours reached on this image for the baselines
    bpp: float
    reached: bool  # bpp <= aimed_bpp
    knob: float
    encode_s: float
    decode_s: float
    scores: dict = field(default_factory=dict)  # metric -> value, or None when unavailable


class Runner:
    """Encodes one image with each method; the codec and the naive prior are loaded once."""

    def __init__(self, methods, backbone: str, adapter: str | None):
        self.codec = None
        if any(m in OURS or m == "naive" for m in methods):
            from codec.core.diffusion_codec import DiffusionCodec

            self.codec = DiffusionCodec.load(backbone=backbone, adapter=adapter or "auto")
            if "ours" in methods and self.codec.learned is None:
                raise SystemExit(
                    f"error: 'ours' needs a trained adapter for backbone {backbone!r} (give --adapter PATH, "
                    "or evaluate 'ours-analytic')"
                )

    def encode(self, image: Image.Image, method: str, target_bpp: float):
        """-> (decoded image, bpp, reached, knob, encode seconds, decode seconds)."""
        if method in OURS:
            mode = "learned" if method == "ours" else "analytic"
            start = time.perf_counter()
            res = self.codec.encode(image, target_bpp=target_bpp, mode=mode)
            encode_s = time.perf_counter() - start
            start = time.perf_counter()
            decoded = self.codec.decode(res.data).image
            decode_s = time.perf_counter() - start
            return decoded, res.bpp, res.bpp <= target_bpp, res.knob, encode_s, decode_s
        backbone = self.codec.backbone if method == "naive" else None
        r = baselines.encode_at_bpp(image, method, target_bpp, backbone=backbone)
        return r.image, r.bpp, r.reached, float(r.quality), r.search_s, r.decode_s


def _score(original: Image.Image, decoded: Image.Image, available: set) -> dict:
    scores = {"psnr": metrics.psnr(original, decoded), "ms_ssim": metrics.ms_ssim(original, decoded)}
    for name in ("lpips", "dists"):
        scores[name] = getattr(metrics, name)(original, decoded) if name in available else None
    return scores


def evaluate(files, methods, targets, runner: Runner, log=print):
    """Every method on every image at every target -> (rows, set-level scores {(method, target): {...}})."""
    available = {m for m in metrics.PERCEPTUAL if metrics.available(m)}
    rows, recon = [], {}
    originals = []
    for path in files:
        with Image.open(path) as f:
            image = f.convert("RGB")
        originals.append(image)
        for target in targets:
            # Baselines aim at the bpp our codec reached here, so they never get more bits.
            aim = None
            for method in methods:
                aimed = target if method in OURS else (aim or target)
                decoded, bpp, reached, knob, enc_s, dec_s = runner.encode(image, method, aimed)
                if method in OURS and aim is None:
                    aim = bpp
                row = Row(path.name, method, target, aimed, bpp, reached, knob, enc_s, dec_s,
                          _score(image, decoded, available))
                rows.append(row)
                recon.setdefault((method, target), []).append(decoded)
                log(f"{path.name} {method} target {target:g}: {bpp:.4f} bpp, PSNR {row.scores['psnr']:.2f} dB, "
                    f"MS-SSIM {row.scores['ms_ssim']:.4f}" + ("" if reached else " (target not reachable)"))
    set_scores = {}
    for key, decoded in recon.items():
        set_scores[key] = {}
        for name in SET_METRICS:
            value = None
            if name in available:
                try:
                    value = getattr(metrics, name)(originals, decoded)
                except ValueError as err:  # too few patches for a set metric
                    log(f"{name.upper()} skipped for {key[0]} at {key[1]:g}: {err}")
            set_scores[key][name] = value
    return rows, set_scores, available


# ----------------------------------------------------------------------------------------------
# Outputs


def _mean(values):
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


def method_results(rows, set_scores, methods, targets) -> dict:
    """compressai-style results per method: one point per target, the mean over images."""
    out = {}
    for method in methods:
        res = {"bpp": [], "target_bpp": [], "encoding_time": [], "decoding_time": [], "images_within_aim": []}
        for name in PER_IMAGE_METRICS + SET_METRICS:
            res[JSON_KEYS[name]] = []
        for target in targets:
            sel = [r for r in rows if r.method == method and r.target_bpp == target]
            res["target_bpp"].append(target)
            res["bpp"].append(_mean([r.bpp for r in sel]))
            res["encoding_time"].append(_mean([r.encode_s for r in sel]))
            res["decoding_time"].append(_mean([r.decode_s for r in sel]))
            res["images_within_aim"].append(sum(r.reached for r in sel))
            for name in PER_IMAGE_METRICS:
                res[JSON_KEYS[name]].append(_mean([r.scores[name] for r in sel]))
            for name in SET_METRICS:
                res[JSON_KEYS[name]].append(set_scores.get((method, target), {}).get(name))
        unavailable = [JSON_KEYS[n] for n in PER_IMAGE_METRICS + SET_METRICS if all(v is None for v in res[JSON_KEYS[n]])]
        for key in unavailable:
            del res[key]
        out[method] = {
            "name": method,
            "description": LABELS[method] + (f"; unavailable (no local weights): {', '.join(unavailable)}" if unavailable else ""),
            "results": res,
        }
    return out


def write_csv(rows, path: Path) -> None:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", "method", "target_bpp", "aimed_bpp", "bpp", "within_aim", "knob", "encode_s", "decode_s",
                    *PER_IMAGE_METRICS])
        for r in rows:
            scores = [("unavailable" if r.scores[m] is None else f"{r.scores[m]:.6g}") for m in PER_IMAGE_METRICS]
            w.writerow([r.image, r.method, r.target_bpp, f"{r.aimed_bpp:.6f}", f"{r.bpp:.6f}", r.reached, f"{r.knob:.6g}",
                        f"{r.encode_s:.4f}", f"{r.decode_s:.4f}", *scores])


def plot(results: dict, out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    axes = (("psnr-rgb", "PSNR (dB)", float), ("ms-ssim-rgb", "MS-SSIM (dB)", msssim_db),
            ("lpips", "LPIPS (lower is better)", float), ("dists", "DISTS (lower is better)", float),
            ("fid", "patch FID (lower is better)", float))
    for key, label, transform in axes:
        curves = {m: r for m, r in results.items() if key in r["results"]}
        if not curves:
            continue
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


# ----------------------------------------------------------------------------------------------
# CLI


def _image_files(data: Path, names: str | None, max_images: int | None) -> list[Path]:
    if not data.is_dir():
        raise SystemExit(f"error: --data {data} is not a folder")
    files = sorted(p for p in data.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if names:
        wanted = [n.strip() for n in names.split(",") if n.strip()]
        missing = [n for n in wanted if not (data / n).is_file()]
        if missing:
            raise SystemExit(f"error: not in {data}: {', '.join(missing)}")
        files = [data / n for n in wanted]
    if max_images:
        files = files[:max_images]
    if not files:
        raise SystemExit(f"error: no images in {data}")
    return files


def _ensure_naive_prior(runner: Runner, train_dir: str | None, files, log) -> None:
    try:
        baselines.load_naive_prior(runner.codec.backbone)
        return
    except baselines.NaivePriorMissing as err:
        if not train_dir:
            raise SystemExit(f"error: {err} (or pass --naive-train DIR to fit it now)")
    evaluated = {p.resolve() for p in files}
    train = [p for p in _image_files(Path(train_dir), None, None)
             if p.resolve() not in evaluated and p.name not in VALIDATION_PHOTOS]
    if not train:
        raise SystemExit("error: --naive-train has no photos besides the evaluated ones")
    log(f"fitting the naive prior on {len(train)} photos from {train_dir} (evaluated and validation photos excluded)")
    baselines.fit_naive_prior(runner.codec.backbone, train)


def _floats(text: str) -> list[float]:
    try:
        values = sorted({float(v) for v in text.split(",") if v.strip()})
    except ValueError:
        raise SystemExit(f"error: --bpp must be a comma-separated list of numbers, got {text!r}") from None
    if not values or values[0] <= 0:
        raise SystemExit("error: --bpp needs positive values")
    return values


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m codec.evaluate", description=__doc__.split("\n")[0])
    parser.add_argument("--data", required=True, help="folder of test images")
    parser.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated, from {','.join(METHODS)}")
    parser.add_argument("--bpp", default="0.05,0.1,0.2,0.4", help="target bitrates")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--backbone", default="demo", help="demo, tiny, a diffusers folder or a hub id")
    parser.add_argument("--adapter", default=None, help="learned adapter folder (default: the backbone's own)")
    parser.add_argument("--images", default=None, help="comma-separated file names inside --data")
    parser.add_argument("--max-images", type=int, default=None)
    parser.add_argument("--naive-train", default=None,
                        help="photos to fit the naive prior on when none is cached (evaluated and validation photos are excluded)")
    args = parser.parse_args(argv)

    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise SystemExit(f"error: unknown method(s) {', '.join(unknown) or '(none)'}; choose from {', '.join(METHODS)}")
    # Ours first: the baselines aim at the bpp it reached.
    methods = [m for m in METHODS if m in methods]
    targets = _floats(args.bpp)
    files = _image_files(Path(args.data), args.images, args.max_images)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    def log(msg):
        print(msg, file=sys.stderr, flush=True)

    from codec.core.backbone import BackboneUnavailable

    try:
        runner = Runner(methods, args.backbone, args.adapter)
    except (BackboneUnavailable, ValueError, OSError) as err:
        raise SystemExit(f"error: {err}") from None
    if runner.codec is not None:
        log(runner.codec.backbone_notice)
    if "naive" in methods:
        _ensure_naive_prior(runner, args.naive_train, files, log)

    rows, set_scores, available = evaluate(files, methods, targets, runner, log)
    results = method_results(rows, set_scores, methods, targets)
    write_csv(rows, out / "per_image.csv")
    for method, res in results.items():
        (out / f"results-{method}.json").write_text(json.dumps(res, indent=2) + "\n")
    tables = bd_tables(results)
    (out / "bd_rate.json").write_text(json.dumps(tables, indent=2) + "\n")
    (out / "bd_rate.md").write_text(bd_markdown(tables))
    plots = plot(results, out)

    missing = [m.upper() for m in metrics.PERCEPTUAL if m not in available]
    print(f"{len(files)} images x {len(methods)} methods x {len(targets)} rates -> {out}")
    if missing:
        print(f"unavailable (no local weights): {', '.join(missing)}")
    print(f"{'method':<14} {'target':>7} {'bpp':>8} {'PSNR':>7} {'MS-SSIM':>8} {'enc s':>7} {'dec s':>7}")
    for method, res in results.items():
        r = res["results"]
        for i, target in enumerate(r["target_bpp"]):
            print(f"{method:<14} {target:>7g} {r['bpp'][i]:>8.4f} {r['psnr-rgb'][i]:>7.2f} {r['ms-ssim-rgb'][i]:>8.4f} "
                  f"{r['encoding_time'][i]:>7.2f} {r['decoding_time'][i]:>7.2f}")
    print(bd_markdown(tables))
    print("plots: " + ", ".join(p.name for p in plots))
    return 0
