"""Does the adapter's predicted timestep help, and is it the right one?

    python benchmarks/adapter_quality.py [--backbone demo] [--adapter auto] [--bpp 0.03,0.05,0.1,0.2,0.4]
                                         [--images astronaut.png,...] [--threads 2] [--steps N] [--sweep-max T]

For each validation photo and target rate: encode (rate control), then decode the same latent
y_hat (a) at the predicted t, as the decoder does, (b) at t = 0 (no denoising: VAE decode of
y_hat), and (c) at every t of a coarse-to-fine sweep, to find the t with the lowest MSE (the
adapter's training distortion). Prints PSNR for each, the predicted and best t, and the rates the
adapter reached. `--steps N` decodes (a) and (c) with N DDIM steps instead of the decoder's own
(the backbone's default_steps), `--sweep-max T` lets (c) look up to T instead of the adapter's t_max:
what another decoder or a larger t range would gain. Bars (issue 6): (a) is not worse than (b) at any rate (equal where the adapter
chooses t = 0, bitstream version 2); |t_pred - t_best| <= 15% of t_best; every rate from 0.03 to
0.5 bpp reachable with one adapter.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from codec.core import images  # noqa: E402
from codec.core.diffusion_codec import DiffusionCodec  # noqa: E402
from codec.core.denoise import denoise  # noqa: E402
from codec.data.photos import VALIDATION_PHOTOS  # noqa: E402

PHOTOS = Path(__file__).resolve().parents[2] / "shared" / "data" / "photos"


def reconstruct_mse(codec: DiffusionCodec, y_hat: torch.Tensor, t: int, original: np.ndarray, steps: int) -> float:
    with torch.no_grad():
        latent = denoise(codec.backbone, y_hat, t, min(steps, t)).latent  # t = 0: y_hat
        x = codec.backbone.decode(latent)
    out = np.asarray(images.to_pil(images.crop(x, *original.shape[:2])), dtype=np.float64)
    return float(np.mean((out - original) ** 2))


def best_timestep(codec, y_hat, original, t_max: int, cache: dict, steps: int) -> int:
    """Coarse-to-fine search of the MSE-optimal t (MSE(t) is close to unimodal)."""
    def mse(t):
        if t not in cache:
            cache[t] = reconstruct_mse(codec, y_hat, t, original, steps)
        return cache[t]

    best = min(range(0, t_max + 1, 10), key=mse)
    for stride in (3, 1):
        window = range(max(0, best - 3 * stride), min(t_max, best + 3 * stride) + 1, stride)
        best = min(window, key=mse)
    return best


def psnr(mse: float) -> float:
    return 10 * math.log10(255**2 / max(mse, 1e-10))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="demo")
    parser.add_argument("--adapter", default="auto")
    parser.add_argument("--mode", default="learned", choices=["learned", "analytic"])
    parser.add_argument("--bpp", default="0.03,0.05,0.1,0.2,0.4")
    parser.add_argument("--images", default=",".join(VALIDATION_PHOTOS))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=None, help="DDIM steps (default: the decoder's)")
    parser.add_argument("--sweep-max", type=int, default=None, help="the best-t search's upper end (default: t_max)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    codec = DiffusionCodec.load(args.backbone, args.adapter, args.mode)
    t_max = codec.adapters[args.mode].t_max
    sweep_max = min(args.sweep_max or t_max, codec.backbone.num_train_timesteps - 1)
    steps = args.steps or codec.backbone.default_steps
    print(f"{codec.backbone_notice} Mode: {args.mode}. {steps} DDIM steps, best t searched in 0..{sweep_max}.\n")
    header = ("image", "target", "bpp", "t_pred", "t_best", "|dt|/t_best", "PSNR@t_pred", "PSNR@t=0", "PSNR@t_best")
    rows, summary = [], {}
    for name in args.images.split(","):
        original_image = images.load_image(PHOTOS / name)
        original = np.asarray(original_image, dtype=np.float64)
        for target in (float(v) for v in args.bpp.split(",")):
            enc = codec.encode(original_image, target_bpp=target, mode=args.mode)
            _, y_hat = codec.dequantize(enc.data)
            cache = {}
            if args.steps is None:  # the real decoder
                decoded = np.asarray(codec.decode(enc.data).image, dtype=np.float64)
                mse_pred = float(np.mean((decoded - original) ** 2))
            else:
                mse_pred = reconstruct_mse(codec, y_hat, enc.t, original, steps)
            mse_zero = reconstruct_mse(codec, y_hat, 0, original, steps)
            t_best = best_timestep(codec, y_hat, original, sweep_max, cache, steps)
            rel = abs(enc.t - t_best) / max(t_best, 1)
            rows.append((name, f"{target:g}", f"{enc.bpp:.4f}", str(enc.t), str(t_best), f"{100 * rel:.0f}%",
                         f"{psnr(mse_pred):.2f}", f"{psnr(mse_zero):.2f}", f"{psnr(cache[t_best]):.2f}"))
            s = summary.setdefault(target, {"bpp": [], "gain": [], "best_gain": [], "rel": [], "beats": 0, "reached": 0})
            s["bpp"].append(enc.bpp)
            s["gain"].append(psnr(mse_pred) - psnr(mse_zero))
            s["best_gain"].append(psnr(cache[t_best]) - psnr(mse_zero))
            s["rel"].append(rel)
            s["beats"] += mse_pred <= mse_zero
            s["reached"] += 0.9 * target <= enc.bpp <= target
            print(" | ".join(rows[-1]), flush=True)

    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    print("\n" + " | ".join(h.ljust(w) for h, w in zip(header, widths)))
    print("-|-".join("-" * w for w in widths))
    for r in rows:
        print(" | ".join(v.ljust(w) for v, w in zip(r, widths)))
    n = len(args.images.split(","))
    print("\ntarget | mean bpp | reached (0.9-1.0 x target) | predicted t not worse than t=0 | mean PSNR gain over t=0 | "
          "the best t's | t within 15% of best")
    for target, s in summary.items():
        within = sum(r <= 0.15 for r in s["rel"])
        print(f"{target:g} | {np.mean(s['bpp']):.4f} | {s['reached']}/{n} | {s['beats']}/{n} | "
              f"{np.mean(s['gain']):+.2f} dB | {np.mean(s['best_gain']):+.2f} dB | {within}/{n}")


if __name__ == "__main__":
    main()
