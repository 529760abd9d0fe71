"""What each part of the analytic adapter contributes: every part switched off in turn, the rest
kept, and each variant encoded to the same targets (rate control, real files) and decoded.

    python benchmarks/analytic_ablation.py [--data ../shared/data/photos] [--images a.png,b.png] [--bpp 0.05,0.1]
                                           [--backbone demo] [--threads 2]

The default images are the validation photos (codec.data.photos.VALIDATION_PHOTOS), which the demo
backbone never saw. Prints mean PSNR (dB), mean bpp reached and median rate-control probes per
variant and target, as a markdown table (docs/method.md, "The analytic mode").
The variants change the adapter in this process only (their files are not the format's).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import statistics
import sys
from pathlib import Path
from unittest import mock

import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from codec.core.adapters import transform  # noqa: E402
from codec.core.adapters.analytic import AnalyticAdapter, noise_matched_timestep  # noqa: E402
from codec.core.diffusion_codec import DiffusionCodec  # noqa: E402
from codec.core.entropy_coding import GaussianConditional, get_scale_table  # noqa: E402
from codec.data.photos import VALIDATION_PHOTOS  # noqa: E402
from codec.evaluate.metrics import psnr  # noqa: E402


class AllBandsCoded(AnalyticAdapter):
    """No switch-off: a band whose symbols are all 0 is still coded, with its RMS as the scale."""

    @staticmethod
    def _switch_off(rms, nonzero):
        return rms


class GaussianModel(AnalyticAdapter):
    """A Gaussian of each band's RMS instead of the Laplacian."""

    @functools.cached_property
    def conditional(self):
        gaussian = GaussianConditional(None)
        gaussian.update_scale_table(get_scale_table(), force=True)
        return gaussian


class NoDenoising(AnalyticAdapter):
    def quantization(self, y, knob, features=None):
        return dataclasses.replace(super().quantization(y, knob, features), t=0)


class RoundingNoiseT(AnalyticAdapter):
    """t from uniform rounding noise, Var = step^2 / 12 (the previous rule), not from the error really left."""

    def quantization(self, y, knob, features=None):
        q = super().quantization(y, knob, features)
        return dataclasses.replace(q, t=noise_matched_timestep(self.alphas_cumprod, 1.0 / (12.0 * q.scale[0] ** 2),
                                                               self.t_max))


def _identity_rotation(y):
    return torch.eye(y.shape[1], dtype=torch.float64)


# name -> (adapter class, patches of codec.core.adapters.transform for both encoder and decoder)
VARIANTS = {
    "all parts": (AnalyticAdapter, {}),
    "no channel KLT": (AnalyticAdapter, {"channel_rotation": _identity_rotation}),
    "no block DCT": (AnalyticAdapter, {"block_size": lambda height, width: 1}),  # 1x1 blocks: one band per channel
    "no band scales (one per channel)": (AnalyticAdapter, {"block_bands": lambda b: torch.zeros(b, b, dtype=torch.long)}),
    "no band switch-off": (AllBandsCoded, {}),
    "Gaussian instead of Laplacian": (GaussianModel, {}),
    "t from rounding noise": (RoundingNoiseT, {}),
    "no denoising (t = 0)": (NoDenoising, {}),
}


def run_variant(backbone, cls, patches: dict, photos: dict, targets: list[float]) -> dict:
    codec = DiffusionCodec(backbone, mode="analytic")
    codec.adapters["analytic"] = cls().attach(backbone)
    rows = {}
    with contextlib.ExitStack() as stack:
        for name, replacement in patches.items():
            stack.enter_context(mock.patch.object(transform, name, replacement))
        for target in targets:
            scores, bpps, probes = [], [], []
            for image in photos.values():
                encoded = codec.encode(image, target_bpp=target)
                scores.append(psnr(image, codec.decode(encoded.data).image))
                bpps.append(encoded.bpp)
                probes.append(encoded.timings["rate_control_probes"])
            rows[target] = (statistics.mean(scores), statistics.mean(bpps), statistics.median(probes))
    return rows


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=str(Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "photos"))
    parser.add_argument("--images", default=",".join(VALIDATION_PHOTOS))
    parser.add_argument("--bpp", default="0.05,0.1")
    parser.add_argument("--backbone", default="demo")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    targets = [float(v) for v in args.bpp.split(",")]
    photos = {name: Image.open(Path(args.data) / name).convert("RGB") for name in args.images.split(",")}
    backbone = DiffusionCodec.load(args.backbone, adapter=None, mode="analytic", device="cpu", dtype="float32").backbone
    header = "| variant | " + " | ".join(f"PSNR @ {t} | bpp | probes" for t in targets) + " |"
    print(f"{len(photos)} images ({', '.join(photos)}), backbone {args.backbone}, mean PSNR in dB, median probes")
    print(header)
    print("|" + "---|" * (1 + 3 * len(targets)))
    for name, (cls, patches) in VARIANTS.items():
        rows = run_variant(backbone, cls, patches, photos, targets)
        cells = " | ".join(f"{p:.2f} | {b:.4f} | {n:g}" for p, b, n in (rows[t] for t in targets))
        print(f"| {name} | {cells} |", flush=True)


if __name__ == "__main__":
    main()
