"""Per-stage wall time of the codec on a 768x512 photo, the codec overhead, and file size against
the entropy model's estimate.

    python benchmarks/codec_speed.py [--backbone demo] [--mode learned|analytic] [--bpp 0.05,0.1,0.2,0.4]
                                     [--image PATH] [--threads 2] [--repeats 3]

"Codec overhead" is everything except the VAE and denoiser calls (adapter, rate control, entropy
coding and decoding, container, padding, conversions), as a share of encode + decode.
Targets (issue 2): overhead <= 3 %; file bytes <= 1.01 x estimated bytes + 40 bytes.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from codec.core.diffusion_codec import DiffusionCodec  # noqa: E402

DEFAULT_IMAGE = Path(__file__).resolve().parents[2] / "shared" / "data" / "photos" / "kite.png"


def measure(codec: DiffusionCodec, image: Image.Image, bpp: float, mode: str, fixed_knob: float | None):
    if fixed_knob is None:
        enc = codec.encode(image, target_bpp=bpp, mode=mode)
    else:
        enc = codec.encode(image, mode=mode, **({"lam": fixed_knob} if mode == "learned" else {"step": fixed_knob}))
    dec = codec.decode(enc.data)
    steps = [v for k, v in dec.timings.items() if k.startswith("denoise_step_")]
    model = enc.timings["vae_encode"] + sum(steps) + dec.timings["vae_decode"]
    total = enc.timings["total"] + dec.timings["total"]
    return {
        "bpp": enc.bpp, "t": enc.t, "steps": enc.steps, "probes": enc.timings["rate_control_probes"],
        "vae_encode": enc.timings["vae_encode"], "adapter": enc.timings["adapter"],
        "entropy_encode": enc.timings["entropy_encode"], "entropy_decode": dec.timings["entropy_decode"],
        "denoise_steps": steps, "vae_decode": dec.timings["vae_decode"], "total": total,
        "overhead": (total - model) / total, "bytes": len(enc.data), "estimated_bytes": enc.estimated_bits / 8,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="demo")
    parser.add_argument("--adapter", default="auto")
    parser.add_argument("--mode", default=None, choices=["learned", "analytic"])
    parser.add_argument("--bpp", default="0.05,0.1,0.2,0.4")
    parser.add_argument("--image", type=Path, default=DEFAULT_IMAGE)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    codec = DiffusionCodec.load(args.backbone, args.adapter, args.mode)
    mode = args.mode or codec.mode
    image = Image.open(args.image).convert("RGB").resize((768, 512), Image.LANCZOS)
    print(f"{codec.backbone_notice} Mode: {mode}. Image: {args.image.name} at 768x512, {args.threads} threads, "
          f"median of {args.repeats} runs.\n")
    measure(codec, image, 0.1, mode, None)  # warm-up

    header = ("target bpp", "bpp", "t", "steps", "probes", "VAE enc ms", "adapter+RC ms", "entropy enc ms",
              "entropy dec ms", "UNet steps ms", "VAE dec ms", "total ms", "overhead", "file B", "est. B", "B - 1.01 est")
    rows = []
    for target in (float(v) for v in args.bpp.split(",")):
        runs = [measure(codec, image, target, mode, None) for _ in range(args.repeats)]
        med = {k: statistics.median(r[k] for r in runs) for k in runs[0] if k != "denoise_steps"}
        step_ms = " + ".join(f"{1000 * statistics.median(r['denoise_steps'][i] for r in runs):.0f}"
                             for i in range(len(runs[0]["denoise_steps"])))
        rows.append((f"{target:g}", f"{med['bpp']:.4f}", f"{med['t']:.0f}", f"{med['steps']:.0f}", f"{med['probes']:.0f}",
                     f"{1000 * med['vae_encode']:.0f}", f"{1000 * med['adapter']:.0f}", f"{1000 * med['entropy_encode']:.0f}",
                     f"{1000 * med['entropy_decode']:.0f}", step_ms, f"{1000 * med['vae_decode']:.0f}",
                     f"{1000 * med['total']:.0f}", f"{100 * med['overhead']:.1f}%", f"{med['bytes']:.0f}",
                     f"{med['estimated_bytes']:.0f}", f"{med['bytes'] - 1.01 * med['estimated_bytes']:+.0f}"))
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    print(" | ".join(h.ljust(w) for h, w in zip(header, widths)))
    print("-|-".join("-" * w for w in widths))
    for r in rows:
        print(" | ".join(v.ljust(w) for v, w in zip(r, widths)))

    # The same at a fixed knob, without rate control: the per-image cost of the method itself.
    fixed = measure(codec, image, 0.0, mode, 100.0 if mode == "learned" else 1.0)
    print(f"\nFixed knob (no rate control): total {1000 * fixed['total']:.0f} ms, overhead {100 * fixed['overhead']:.1f}%, "
          f"adapter {1000 * fixed['adapter']:.0f} ms, entropy enc/dec {1000 * fixed['entropy_encode']:.0f}/"
          f"{1000 * fixed['entropy_decode']:.0f} ms, file {fixed['bytes']} B vs estimate {fixed['estimated_bytes']:.0f} B.")


if __name__ == "__main__":
    main()
