"""Rate-distortion(-realism) evaluation of the codec and the baselines over a dataset.

    python -m codec.evaluate --data DIR|'DIR/**/*.png' [--images LIST.txt|a.png,b.png] --out DIR \\
        [--methods ours,ours-analytic,naive,jpeg,webp,avif,heic] [--bpp 0.05,0.1,0.2,0.4] \\
        [--backbone demo] [--adapter PATH] [--resize 256 --crop 256] [--max-images N] [--naive-train DIR]
    accelerate launch --multi_gpu --num_processes N -m codec.evaluate ...   (N processes, GPUs or CPU workers)

For every image and target bpp, each method's real file size (bpp) and every per-image metric of
codec/evaluate/metrics.py (PSNR, MS-SSIM, SWD; LPIPS/DISTS where their weights are on disk), plus
patch FID / KID per rate point where their weights are on disk. The baselines are run at the bpp our
codec reached on that image (closest without going over), and report the bpp they actually reached.

Writes into --out: per_image.csv, results-<method>.json (compressai's results format: mean over
images per rate point; "images_within_aim" counts the images whose file is not above the bpp aimed
at), rd-<metric>.png, bd_rate.md / bd_rate.json, and rows/ (the finished rows: re-running the same
command resumes). docs/evaluation.md: datasets, 8 GPUs, costs.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from codec.data import datasets
from codec.data.photos import DataError


def _parser() -> argparse.ArgumentParser:
    from codec.evaluate.run import METHODS

    parser = argparse.ArgumentParser(prog="python -m codec.evaluate", description=__doc__.split("\n")[0])
    parser.add_argument("--data", required=True, help="folder of test images, or a glob such as 'clic/**/*.png'")
    parser.add_argument("--images", default=None,
                        help="a .txt file listing images inside --data (one a line), or comma-separated names")
    parser.add_argument("--methods", default=None, help=f"comma-separated, from {','.join(METHODS)} (default: all "
                        "of them, 'ours' only where the backbone has a learned adapter)")
    parser.add_argument("--bpp", default="0.05,0.1,0.2,0.4", help="target bitrates")
    parser.add_argument("--out", required=True, help="output folder (re-running into it resumes)")
    parser.add_argument("--backbone", default="demo", help="demo, tiny, a diffusers folder or a hub id")
    parser.add_argument("--adapter", default=None, help="learned adapter folder (default: the backbone's own)")
    parser.add_argument("--resize", type=int, default=None, help="scale the short side to this many pixels first")
    parser.add_argument("--crop", default=None, help="then centre-crop to SIZE or WxH (COCO-30k: --resize 256 --crop 256)")
    parser.add_argument("--max-images", type=int, default=None)
    parser.add_argument("--max-pixels", type=int, default=None,
                        help="the codec's limit on an image's padded area (default 1536x1536; CLIC 2020 needs 2048x1536)")
    parser.add_argument("--naive-train", default=None,
                        help="photos to fit the naive prior on when none is cached (evaluated and validation photos are excluded)")
    parser.add_argument("--save-reconstructions", action="store_true",
                        help="keep every reconstruction as PNG under --out/reconstructions (always, when FID/KID can run)")
    return parser


def main(argv=None) -> int:
    from codec.evaluate import run

    args = _parser().parse_args(argv)
    try:
        if args.resize is not None and args.resize < 1:
            raise DataError("--resize must be a positive number of pixels")
        settings = run.Settings(
            methods=run.parse_methods(args.methods or ",".join(run.METHODS)), ours_if_trained=args.methods is None,
            targets=run.parse_targets(args.bpp), backbone=args.backbone,
            adapter=args.adapter, resize=args.resize, crop=datasets.parse_size(args.crop) if args.crop else None,
            naive_train=args.naive_train, save_reconstructions=args.save_reconstructions, max_pixels=args.max_pixels)
        files = datasets.list_images(args.data, args.images, args.max_images)
        out = Path(args.out)
        if out.exists() and not out.is_dir():
            raise DataError(f"--out {out} is a file; it names the output folder")
        out.mkdir(parents=True, exist_ok=True)
        result = run.evaluate(files, settings, out, log=_log, progress_bar=_bar)
    except (run.EvaluationError, DataError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if result is not None:  # the main process
        _print_summary(result, len(files), settings, out)
    return 0


def _log(message: str) -> None:
    from tqdm import tqdm

    tqdm.write(message, file=sys.stderr)


def _bar(total: int, initial: int, process: int, processes: int):
    """One tqdm bar per process (its own line), counting (image, target) pairs, with its ETA."""
    from tqdm import tqdm

    desc = f"process {process + 1}/{processes}" if processes > 1 else "evaluate"
    return tqdm(total=total, initial=initial, position=process, desc=desc, unit="pair", file=sys.stderr,
                dynamic_ncols=True, mininterval=1.0)


def _print_summary(result, n_images: int, settings, out: Path) -> None:
    from codec.evaluate.bdrate import bd_markdown

    print(f"{n_images} images x {len(settings.methods)} methods x {len(settings.targets)} rates -> {out}")
    if result.unavailable:
        print(f"unavailable (no local weights): {', '.join(m.upper() for m in result.unavailable)}")
    print(f"{'method':<14} {'target':>7} {'bpp':>8} {'PSNR':>7} {'MS-SSIM':>8} {'enc s':>7} {'dec s':>7}")
    for method, res in result.results.items():
        r = res["results"]
        for i, target in enumerate(r["target_bpp"]):
            msssim = r.get("ms-ssim-rgb", [None] * len(r["bpp"]))[i]
            print(f"{method:<14} {target:>7g} {r['bpp'][i]:>8.4f} {r['psnr-rgb'][i]:>7.2f} "
                  f"{'n/a' if msssim is None else f'{msssim:.4f}':>8} "
                  f"{r['encoding_time'][i]:>7.2f} {r['decoding_time'][i]:>7.2f}")
    print(bd_markdown(result.tables))
    print("plots: " + ", ".join(p.name for p in result.plots))


if __name__ == "__main__":
    sys.exit(main())
