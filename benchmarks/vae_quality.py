"""Demo backbone quality and speed: VAE round trip vs box-downsample-by-8 + bicubic upsample.

    python benchmarks/vae_quality.py [--backbone assets/models/demo] [--data ../shared/data/photos]

Prints, per held-out validation photo, PSNR and MS-SSIM of the trivial /8 codec (PIL box down,
bicubic up: same latent grid, 3 channels instead of 4) and of the VAE round trip, their means, and
the wall times at 768x512 on 2 CPU threads of VAE encode, VAE decode and one UNet call (96x64 latent).
"""

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from diffusers import UNet2DModel

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from codec.core.demo_models import DemoAutoencoder  # noqa: E402
from codec.data.photos import VALIDATION_PHOTOS, load_photos  # noqa: E402
from codec.evaluate.metrics import ms_ssim as msssim, psnr  # noqa: E402
from codec.train.demo_backbone import box_bicubic_reference, vae_round_trip  # noqa: E402


def best_time(fn, repeats: int) -> float:
    fn()  # warm-up (oneDNN picks its kernels on the first call)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    root = Path(__file__).resolve().parents[1]
    parser.add_argument("--backbone", type=Path, default=root / "assets/models/demo")
    parser.add_argument("--data", type=Path, default=root.parent / "shared/data/photos")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=10, help="timings report the best of this many runs")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    vae = DemoAutoencoder.from_pretrained(args.backbone / "vae").eval()
    unet = UNet2DModel.from_pretrained(args.backbone / "unet").eval()
    photos = load_photos(args.data)

    rows = []
    print(f"{'photo':<16}{'size':>10}{'box/bic PSNR':>14}{'VAE PSNR':>10}{'gain dB':>9}{'box/bic MS-SSIM':>17}{'VAE MS-SSIM':>13}")
    for name in VALIDATION_PHOTOS:
        arr = photos[name]
        ref, ours = box_bicubic_reference(arr), vae_round_trip(vae, arr)
        row = (psnr(arr, ref), psnr(arr, ours), msssim(arr, ref), msssim(arr, ours))
        rows.append(row)
        size = f"{arr.shape[1]}x{arr.shape[0]}"
        print(f"{name:<16}{size:>10}{row[0]:>14.2f}{row[1]:>10.2f}{row[1] - row[0]:>+9.2f}{row[2]:>17.4f}{row[3]:>13.4f}")
    m = np.mean(rows, axis=0)
    print(f"{'mean':<16}{'':>10}{m[0]:>14.2f}{m[1]:>10.2f}{m[1] - m[0]:>+9.2f}{m[2]:>17.4f}{m[3]:>13.4f}")
    bar = m[1] - m[0] >= 1.5 and m[3] > m[2]
    print(f"quality bar (VAE >= box/bicubic + 1.5 dB PSNR and higher MS-SSIM): {'met' if bar else 'NOT met'}")

    x = torch.rand(1, 3, 512, 768) * 2 - 1
    with torch.no_grad():
        z = vae.encode(x).latents
        y = z * vae.config.scaling_factor
        t_enc = best_time(lambda: vae.encode(x), args.repeats)
        t_dec = best_time(lambda: vae.decode(z), args.repeats)
        t_unet = best_time(lambda: unet(y, torch.tensor([100])).sample, args.repeats)
    n_params = sum(p.numel() for p in vae.parameters()), sum(p.numel() for p in unet.parameters())
    print(f"\n768x512 on {args.threads} threads: VAE encode {t_enc * 1000:.0f} ms, VAE decode {t_dec * 1000:.0f} ms, "
          f"one UNet call on {tuple(y.shape[-2:])} latent {t_unet * 1000:.0f} ms")
    print(f"parameters: VAE {n_params[0] / 1e6:.2f} M, UNet {n_params[1] / 1e6:.2f} M; scaling_factor {vae.config.scaling_factor:.4f}")


if __name__ == "__main__":
    main()
