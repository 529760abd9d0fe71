"""python -m codec.train data|backbone|adapter: build the training set; train the demo backbone or an adapter, resumable.

    python -m codec.train data --out DIR [--photos ../shared/data/photos] [--debs FOLDER]
    python -m codec.train backbone --data DIR --out assets/models/demo [--size v2] [--resume]
    python -m codec.train adapter --backbone demo --data DIR --out OUT [--minutes M]

See codec/data/wallpapers.py, codec/train/demo_backbone.py and codec/train/adapter.py for what each does.
"""

import argparse
import logging
import sys
from pathlib import Path

import torch

from codec.data import wallpapers
from codec.data.photos import DataError
from codec.train import adapter as train_adapter
from codec.train.arguments import non_negative_float, positive_float, positive_int
from codec.train.demo_backbone import MODEL_SIZES, BackboneConfig, ResumeError, train_backbone

log = logging.getLogger("codec.train")


def setup_logging(log_file: Path) -> None:
    log_file.parent.mkdir(parents=True, exist_ok=True)
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%Y-%m-%d %H:%M:%S")
    for handler in (logging.StreamHandler(sys.stdout), logging.FileHandler(log_file)):
        handler.setFormatter(fmt)
        log.addHandler(handler)
    log.setLevel(logging.INFO)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m codec.train", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    train_adapter.add_parser(commands)
    data = commands.add_parser("data", help="build the demo backbone's training set from Debian packages and a photo folder")
    data.add_argument("--out", type=Path, required=True, help="new folder for the photos and SOURCES.json")
    data.add_argument("--photos", type=Path, default=Path("../shared/data/photos"),
                      help="photo folder with SOURCES.json, copied in (its validation photos stay validation)")
    data.add_argument("--packages", default=",".join(wallpapers.PACKAGES), help="comma-separated Debian packages")
    data.add_argument("--debs", type=Path, help="folder of the pinned .deb files, named as in the pool (default: download them)")
    bb = commands.add_parser("backbone", help="train the bundled demo backbone (VAE + UNet) on a photo folder")
    bb.add_argument("--data", type=Path, required=True, help="folder of photos (validation photos are held out)")
    bb.add_argument("--out", type=Path, default=Path("assets/models/demo"), help="diffusers folder to export to")
    bb.add_argument("--work", type=Path, default=Path("runs/demo"), help="checkpoints and progress.log")
    bb.add_argument("--vae-minutes", type=non_negative_float, default=60.0,
                    help="total VAE training time, CPU minutes per thread (across resumes); 0 with --init keeps its VAE as it is")
    bb.add_argument("--unet-minutes", type=positive_float, default=40.0, help="total UNet training time, CPU minutes per thread (across resumes)")
    bb.add_argument("--size", choices=sorted(MODEL_SIZES), default="v2", help="model sizes (demo_backbone.MODEL_SIZES)")
    bb.add_argument("--resume", action="store_true", help="continue from the checkpoints in --work")
    bb.add_argument("--init", type=Path, help="an exported backbone folder (e.g. assets/models/demo) whose weights "
                    "the models without a checkpoint in --work start from (fresh optimizer, minutes from 0)")
    bb.add_argument("--threads", type=positive_int, default=2, help="torch CPU threads")
    args = parser.parse_args(argv)
    if args.command == "backbone" and args.vae_minutes == 0 and args.init is None:
        parser.error("--vae-minutes 0 needs --init: an untrained VAE cannot be kept")

    if args.command == "data":
        try:
            sources = wallpapers.build(args.out, args.photos, args.packages.split(","), args.debs)
        except DataError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        training = sum(entry["split"] == "training" for entry in sources)
        print(f"{args.out}: {training} training and {len(sources) - training} validation photos, SOURCES.json")
        return 0

    torch.set_num_threads(args.threads)
    setup_logging(args.work / "progress.log")
    try:
        if args.command == "adapter":
            train_adapter.run(args)
        else:
            train_backbone(args.data, args.out, args.work, args.vae_minutes, args.unet_minutes, args.resume,
                           BackboneConfig(**MODEL_SIZES[args.size]), args.init)
    except (DataError, ResumeError, FileExistsError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
