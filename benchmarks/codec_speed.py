"""Per-stage wall time of the codec on a 768x512 photo, peak memory, the codec overhead, and file
size against the entropy model's estimate.

    python benchmarks/codec_speed.py [--backbone demo|FOLDER|ID] [--mode learned|analytic] [--bpp 0.05,0.1,0.2,0.4]
                                     [--device cpu|cuda] [--dtype float32|float16|bfloat16]
                                     [--image PATH] [--threads 2] [--repeats 3] [--warmup 1] [--no-fixed-knob]

Stable Diffusion-sized models without a download: `python -m codec.core.random_backbones sd-2-1-base DIR`,
then `--backbone DIR --mode analytic` (random weights, SD 2.1's architectures: the times are SD's).

"Codec overhead" is everything except the VAE and denoiser calls (adapter, rate control, entropy
coding and decoding, container, padding, conversions), as a share of encode + decode.
"Peak RSS" is the process's high-water mark (model loading included); "CUDA peak" is
torch.cuda.max_memory_allocated over the measured runs.
Targets: overhead <= 3 % on the demo (issue 2), <= 1 % on SD-sized models (issue 11);
file bytes <= 1.01 x estimated bytes + 40 bytes.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import time
from pathlib import Path

import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from codec.core.diffusion_codec import DiffusionCodec  # noqa: E402
from codec.data.datasets import cover_crop  # noqa: E402

DEFAULT_IMAGE = Path(__file__).resolve().parent.parent / "tests" / "data" / "photos" / "kite.png"
GB = 1024**3


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


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GB  # Linux reports KiB


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="demo", help="demo, tiny, a diffusers folder or a hub id")
    parser.add_argument("--adapter", default="auto", help="auto (the backbone folder's), a folder, or none")
    parser.add_argument("--mode", default=None, choices=["learned", "analytic"])
    parser.add_argument("--bpp", default="0.05,0.1,0.2,0.4")
    parser.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda when available)")
    parser.add_argument("--dtype", default=None, choices=["float32", "float16", "bfloat16"],
                        help="default: float16 on CUDA, float32 on the CPU")
    parser.add_argument("--image", type=Path, default=DEFAULT_IMAGE)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1, help="unmeasured encode+decode runs first")
    parser.add_argument("--fixed-knob", action=argparse.BooleanOptionalAction, default=True,
                        help="also measure one run at a fixed knob, without rate control")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    tick = time.perf_counter()
    adapter = None if args.adapter.lower() == "none" else args.adapter
    codec = DiffusionCodec.load(args.backbone, adapter, args.mode, device=args.device, dtype=args.dtype)
    load_s = time.perf_counter() - tick
    backbone = codec.backbone
    cuda = backbone.device.type == "cuda"
    mode = args.mode or codec.mode
    with Image.open(args.image) as im:
        image = cover_crop(im, 768, 512)
    params = sum(p.numel() for p in backbone.unet.parameters()) / 1e6
    print(f"{codec.backbone_notice} Mode: {mode}. UNet {params:.0f}M parameters, {backbone.device} "
          f"{str(backbone.dtype).removeprefix('torch.')}, loaded in {load_s:.1f} s (peak RSS {peak_rss_gb():.2f} GB). "
          f"Image: {args.image.name} at 768x512, {args.threads} threads, median of {args.repeats} runs.\n")
    for _ in range(args.warmup):
        measure(codec, image, 0.1, mode, None)
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()

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
                     f"{1000 * med['total']:.0f}", f"{100 * med['overhead']:.2f}%", f"{med['bytes']:.0f}",
                     f"{med['estimated_bytes']:.0f}", f"{med['bytes'] - 1.01 * med['estimated_bytes']:+.0f}"))
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    print(" | ".join(h.ljust(w) for h, w in zip(header, widths)))
    print("-|-".join("-" * w for w in widths))
    for r in rows:
        print(" | ".join(v.ljust(w) for v, w in zip(r, widths)))

    if args.fixed_knob:  # the per-image cost of the method itself
        fixed = measure(codec, image, 0.0, mode, 100.0 if mode == "learned" else 1.0)
        print(f"\nFixed knob (no rate control): total {1000 * fixed['total']:.0f} ms, overhead {100 * fixed['overhead']:.2f}%, "
              f"adapter {1000 * fixed['adapter']:.0f} ms, entropy enc/dec {1000 * fixed['entropy_encode']:.0f}/"
              f"{1000 * fixed['entropy_decode']:.0f} ms, file {fixed['bytes']} B vs estimate {fixed['estimated_bytes']:.0f} B.")
    memory = f"\nPeak memory: RSS {peak_rss_gb():.2f} GB"
    if cuda:
        memory += f", CUDA max allocated {torch.cuda.max_memory_allocated() / GB:.2f} GB (weights included)"
    print(memory + ".")


if __name__ == "__main__":
    main()
