"""Speed of each baseline at a target bpp on a 768x512 photo: the rate control (search), the final
encode alone, the decode, and how many encodes the search took.

    python benchmarks/baselines_speed.py [--image PATH] [--bpp 0.1,0.2,0.4] [--backbone demo] [--fast]

"naive" runs when the backbone loads and its prior is fitted (python -m codec.evaluate.baselines fit-naive).
Times are wall-clock seconds, the best of --repeat runs; the machine's load shows in them.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from PIL import Image  # noqa: E402

from codec.evaluate import baselines  # noqa: E402

DEFAULT_IMAGE = Path(__file__).resolve().parents[2] / "shared" / "data" / "photos" / "creek.png"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--image", default=str(DEFAULT_IMAGE))
    parser.add_argument("--bpp", default="0.1,0.2,0.4")
    parser.add_argument("--backbone", default="demo", help="for the naive baseline; 'none' to skip it")
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--fast", action="store_true", help="the quicker settings the app uses (fast=True)")
    args = parser.parse_args()

    with Image.open(args.image) as f:
        image = f.convert("RGB")
    methods = list(baselines.METHODS)
    backbone = None
    if args.backbone != "none":
        from codec.core.backbone import BackboneUnavailable, load_backbone

        try:
            backbone = load_backbone(args.backbone)
            baselines.load_naive_prior(backbone)
            methods.append("naive")
        except (BackboneUnavailable, baselines.NaivePriorMissing) as err:
            print(f"naive skipped: {err}")
    print(f"{Path(args.image).name} {image.width}x{image.height}, {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.1f}, best of {args.repeat}, {'fast' if args.fast else 'default'} settings")
    print(f"{'method':<7} {'target':>6} {'bpp':>7} {'q':>8} {'encodes':>7} {'search s':>9} {'encode s':>9} "
          f"{'decode s':>9} {'total s':>8}")
    totals = {}
    for target in [float(v) for v in args.bpp.split(",")]:
        for method in methods:
            runs = []
            for _ in range(args.repeat):
                start = time.perf_counter()
                r = baselines.encode_at_bpp(image, method, target, backbone=backbone, fast=args.fast)
                runs.append((time.perf_counter() - start, r))
            total, r = min(runs, key=lambda run: run[0])
            totals[target] = totals.get(target, 0.0) + total
            print(f"{method:<7} {target:>6g} {r.bpp:>7.4f} {r.quality:>8.4g} {r.iterations:>7} {r.search_s:>9.3f} "
                  f"{r.encode_s:>9.3f} {r.decode_s:>9.3f} {total:>8.3f}" + ("" if r.reached else "  (not reached)"))
    for target, total in totals.items():
        print(f"all baselines one after another at {target:g} bpp: {total:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
