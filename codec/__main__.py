"""python -m codec encode|decode|info: the codec from the command line.

Errors print one line on stderr and exit non-zero; no tracebacks for bad input.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from codec.core.backbone import BackboneUnavailable
from codec.core.bitstream import DEFAULT_MAX_PIXELS, DEFAULT_MAX_STEPS, MAX_STEPS_FIELD, BitstreamError
from codec.core.images import ImageError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m codec", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    def model_options(p):
        p.add_argument("--backbone", default="auto",
                       help="hub id, local diffusers folder, 'demo' or 'tiny' (default: Stable Diffusion if loadable, else demo)")
        p.add_argument("--adapter", default="auto", help="trained adapter folder (default: the one shipped with the backbone)")
        p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
        limit_options(p)

    def limit_options(p):
        p.add_argument("--max-pixels", type=_positive(), default=DEFAULT_MAX_PIXELS,
                       help=f"refuse images whose padded area exceeds this (default: {DEFAULT_MAX_PIXELS:,}, as the app)")
        p.add_argument("--max-steps", type=_positive(MAX_STEPS_FIELD), default=DEFAULT_MAX_STEPS,
                       help=f"refuse files that ask for more denoising steps (default: {DEFAULT_MAX_STEPS})")

    enc = sub.add_parser("encode", help="compress an image into a bitstream file")
    enc.add_argument("input", type=Path)
    enc.add_argument("output", type=Path)
    rate = enc.add_mutually_exclusive_group()
    rate.add_argument("--bpp", type=float, help="target bits per pixel (largest rate not above it)")
    rate.add_argument("--lam", type=float, help="rate-distortion trade-off lambda (learned mode)")
    rate.add_argument("--step", type=float, help="quantization step in channel standard deviations (analytic mode)")
    enc.add_argument("--mode", choices=["learned", "analytic"], default=None)
    enc.add_argument("--steps", type=int, default=None, help="number of DDIM steps the decoder will run")
    model_options(enc)

    dec = sub.add_parser("decode", help="reconstruct an image from a bitstream file")
    dec.add_argument("input", type=Path)
    dec.add_argument("output", type=Path, help="output image (PNG)")
    model_options(dec)

    info = sub.add_parser("info", help="print a bitstream's header fields and bpp")
    info.add_argument("input", type=Path)
    limit_options(info)
    return parser


def _positive(maximum: int | None = None):
    wanted = f"an integer from 1 to {maximum}" if maximum else "a positive integer"

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = 0
        if value < 1 or (maximum is not None and value > maximum):
            raise argparse.ArgumentTypeError(f"{text!r} is not {wanted}")
        return value
    return parse


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "info":
            from codec.core.bitstream import describe

            print(json.dumps(describe(_read(args.input), args.max_pixels, args.max_steps), indent=2))
            return 0

        from codec.core.diffusion_codec import DiffusionCodec

        codec = DiffusionCodec.load(args.backbone, args.adapter, getattr(args, "mode", None), device=args.device,
                                    max_pixels=args.max_pixels, max_steps=args.max_steps)
        print(codec.backbone_notice, file=sys.stderr)
        if args.command == "encode":
            if args.bpp is None and args.lam is None and args.step is None:
                args.bpp = 0.1
            result = codec.encode(args.input, lam=args.lam, target_bpp=args.bpp, step=args.step,
                                  mode=args.mode, steps=args.steps)
            args.output.write_bytes(result.data)
            print(f"{args.output}: {len(result.data)} bytes, {result.bpp:.4f} bpp, t={result.t}, "
                  f"{result.steps} steps, {result.mode} mode, {result.timings['total']:.2f} s")
        else:
            result = codec.decode(_read(args.input))
            result.image.save(args.output, format="PNG")
            print(f"{args.output}: {result.image.width}x{result.image.height}, {result.bpp:.4f} bpp, "
                  f"t={result.header['t']}, {result.timings['total']:.2f} s")
        return 0
    except (BitstreamError, ImageError, BackboneUnavailable, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


def _read(path: Path) -> bytes:
    if not path.is_file():
        raise OSError(f"No such file: {path}")
    return path.read_bytes()


if __name__ == "__main__":
    sys.exit(main())
