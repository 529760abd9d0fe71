"""SWD (codec/evaluate/realism.py) of each baseline (and of our codec) at a few rates on a few
photos, next to PSNR, and what one SWD costs on a 768x512 image pair.

    python benchmarks/realism_swd.py [--photos kite,storm] [--bpp 0.1,0.3] [--width 768] [--backbone demo]
                                     [--repeat 5]

Photos come from tests/data/photos, resized to --width (aspect kept). With a backbone (default
demo) our codec runs in each of its modes ("ours-<mode>"), and "naive" when its prior is found; the
demo backbone's tiny VAE caps what ours can reach, so its rows say little about a real backbone. Costs are wall-clock seconds of one swd() call on the
original and the JPEG reconstruction, the best (and the median) of --repeat runs, in this process
(OMP_NUM_THREADS decides numpy's threads); the machine's load shows in them.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

from codec.evaluate import baselines, metrics, realism  # noqa: E402
from tests.photos import photo  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--photos", default="kite,storm")
    parser.add_argument("--bpp", default="0.1,0.3")
    parser.add_argument("--width", type=int, default=768)
    parser.add_argument("--backbone", default="demo", help="for the naive baseline; 'none' to skip it")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()

    methods = list(baselines.METHODS)
    backbone = codec = None
    if args.backbone != "none":
        from codec.core.diffusion_codec import DiffusionCodec

        codec = DiffusionCodec.load(backbone=args.backbone)
        backbone = codec.backbone
        methods = [f"ours-{mode}" for mode in sorted(codec.adapters)] + methods
        try:
            baselines.load_naive_prior(backbone)
            methods.append("naive")
        except baselines.NaivePriorMissing as err:
            print(f"naive skipped: {err}", file=sys.stderr)

    targets = [float(v) for v in args.bpp.split(",")]
    print(f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '(unset)')}, load average "
          f"{' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    print(f"SWD x1e3 (lower is better; levels from full size down to {realism.COARSEST} px, "
          f"{realism.MAX_DESCRIPTORS} descriptors/level, {realism.DIRECTIONS} directions)\n")
    print("| photo | target bpp | method | bpp | PSNR (dB) | SWD | SWD per level (finest first) |")
    print("|---|---|---|---|---|---|---|")
    timing_pair = None
    for name in args.photos.split(","):
        image = photo(name, args.width)
        for target in targets:
            for method in methods:
                if method.startswith("ours-"):
                    res = codec.encode(image, target_bpp=target, mode=method.removeprefix("ours-"))
                    decoded, bpp, reached = codec.decode(res.data).image, res.bpp, res.bpp <= target
                else:
                    r = baselines.encode_at_bpp(image, method, target, backbone=backbone if method == "naive" else None)
                    decoded, bpp, reached = r.image, r.bpp, r.reached
                levels = realism.swd_per_level(np.asarray(image), np.asarray(decoded))
                flag = "" if reached else " (floor)"
                print(f"| {name} {image.width}x{image.height} | {target:g} | {method} | {bpp:.3f}{flag} | "
                      f"{metrics.psnr(image, decoded):.2f} | {np.mean(levels):.1f} | "
                      f"{' '.join(f'{v:.0f}' for v in levels)} |", flush=True)
                if method == "jpeg" and timing_pair is None:
                    timing_pair = (np.asarray(image), np.asarray(decoded))

    a, b = timing_pair
    times = []
    for _ in range(args.repeat):
        start = time.perf_counter()
        metrics.swd(a, b)
        times.append(time.perf_counter() - start)
    print(f"\nSWD cost on {a.shape[1]}x{a.shape[0]}: best {min(times):.3f} s, median {statistics.median(times):.3f} s "
          f"over {args.repeat} runs")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
