"""Rate control on real photos: probes, how close the file comes to the target, and its time.

    python benchmarks/rate_control.py [--backbone demo] [--adapter auto|FOLDER] [--modes learned,analytic]
                                      [--bpp 0.02,0.03,0.05,0.1,0.2,0.3,0.5] [--threads 1]

Encodes every photo of tests/data/photos and the validation photos of ../shared/data/photos (when
that folder exists) at their own size, at every target, in each mode, and prints one row per mode
and target: the probes (`timings["rate_control_probes"]`: candidates the search evaluated), the
reached bpp as a fraction of the target (never above 1 unless even the lowest rate overshoots: the
"over" column counts those files), and the time from the latent to the file (adapter + entropy
coding: everything rate control does). Targets (issue 11): median probes <= 6 at every target.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from codec.core.diffusion_codec import DiffusionCodec  # noqa: E402
from codec.data.photos import VALIDATION_PHOTOS  # noqa: E402

TEST_PHOTOS = ROOT / "tests" / "data" / "photos"
SHARED_PHOTOS = ROOT.parent / "shared" / "data" / "photos"


def photo_paths() -> list[Path]:
    paths = {p.name: p for p in sorted(TEST_PHOTOS.glob("*.png"))}
    for name in VALIDATION_PHOTOS:
        if (SHARED_PHOTOS / name).is_file():
            paths.setdefault(name, SHARED_PHOTOS / name)
    return list(paths.values())


def measure(codec: DiffusionCodec, image: Image.Image, target: float, mode: str) -> dict:
    enc = codec.encode(image, target_bpp=target, mode=mode)
    return {"probes": enc.timings["rate_control_probes"], "fraction": enc.bpp / target,
            "seconds": enc.timings["adapter"] + enc.timings["entropy_encode"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="demo")
    parser.add_argument("--adapter", default="auto")
    parser.add_argument("--modes", default=None, help="comma-separated (default: every mode the codec has)")
    parser.add_argument("--bpp", default="0.02,0.03,0.05,0.1,0.2,0.3,0.5")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    codec = DiffusionCodec.load(args.backbone, args.adapter)
    modes = args.modes.split(",") if args.modes else sorted(codec.adapters)
    paths = photo_paths()
    photos = {p.name: Image.open(p).convert("RGB") for p in paths}
    targets = [float(v) for v in args.bpp.split(",")]
    print(f"{codec.backbone_notice} {len(photos)} photos ({', '.join(photos)}) at their own size, "
          f"{args.threads} thread(s).\n")
    codec.encode(next(iter(photos.values())), target_bpp=0.1, mode=modes[0])  # warm-up

    header = ("mode", "target bpp", "median probes", "max probes", "min bpp/target", "median bpp/target",
              "max bpp/target", "over", "median RC ms", "max RC ms")
    rows = []
    for mode in modes:
        for target in targets:
            runs = []
            for name, image in photos.items():
                runs.append(measure(codec, image, target, mode))
                print(f"{name} {mode} {target:g}: {runs[-1]['probes']} probes, bpp/target {runs[-1]['fraction']:.3f}, "
                      f"{1000 * runs[-1]['seconds']:.0f} ms", file=sys.stderr, flush=True)  # progress and details
            probes = [r["probes"] for r in runs]
            fractions = [r["fraction"] for r in runs]
            ms = [1000 * r["seconds"] for r in runs]
            rows.append((mode, f"{target:g}", f"{statistics.median(probes):g}", f"{max(probes)}",
                         f"{min(fractions):.3f}", f"{statistics.median(fractions):.3f}", f"{max(fractions):.3f}",
                         f"{sum(f > 1 for f in fractions)}", f"{statistics.median(ms):.0f}", f"{max(ms):.0f}"))
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    print(" | ".join(h.ljust(w) for h, w in zip(header, widths)))
    print("-|-".join("-" * w for w in widths))
    for r in rows:
        print(" | ".join(v.ljust(w) for v, w in zip(r, widths)))


if __name__ == "__main__":
    main()
