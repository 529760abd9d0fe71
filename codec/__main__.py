"""python -m codec encode|decode|info: the codec from the command line.

encode and decode take a file, or a folder and an output folder (codec/batch.py: the model is
loaded once, files already done are skipped, OUT_DIR/summary.csv). Errors print one line on stderr
and exit non-zero; no tracebacks for bad input. Each command imports only what it needs: `info`
reads a header without torch, diffusers or compressai, encode and decode import only the modules of
those the codec runs (codec/core/lean_imports.py; times: benchmarks/cli_startup.py).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
from pathlib import Path

from codec.batch import DecodeBatch, EncodeBatch, read_bitstream
from codec.data.files import write_atomically, write_png
from codec.core.bitstream import DEFAULT_MAX_PIXELS, DEFAULT_MAX_STEPS, MAX_STEPS_FIELD, describe

DTYPES = ("float32", "float16", "bfloat16")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m codec", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    def model_options(p):
        p.add_argument("--backbone", default="auto",
                       help="hub id, local diffusers folder, 'demo' or 'tiny' (default: Stable Diffusion if loadable, else demo)")
        p.add_argument("--adapter", default="auto", help="trained adapter folder (default: the one shipped with the backbone)")
        p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
        p.add_argument("--dtype", choices=DTYPES, default=None,
                       help="the models' dtype (default: float16 on CUDA, float32 on CPU); a file decodes in any dtype")
        limit_options(p)

    def limit_options(p):
        p.add_argument("--max-pixels", type=_positive(), default=DEFAULT_MAX_PIXELS,
                       help=f"refuse images whose padded area exceeds this (default: {DEFAULT_MAX_PIXELS:,}, as the app)")
        p.add_argument("--max-steps", type=_positive(MAX_STEPS_FIELD), default=DEFAULT_MAX_STEPS,
                       help=f"refuse files that ask for more denoising steps (default: {DEFAULT_MAX_STEPS})")

    enc = sub.add_parser("encode", help="compress an image into a bitstream file (or a folder's images into OUT_DIR)")
    enc.add_argument("input", type=Path, help="an image, or a folder of images")
    enc.add_argument("output", type=Path, help="the bitstream file (.dfcx), or the output folder")
    rate = enc.add_mutually_exclusive_group()
    rate.add_argument("--bpp", type=float, help="target bits per pixel (largest rate not above it)")
    rate.add_argument("--lam", type=float, help="rate-distortion trade-off lambda (learned mode)")
    rate.add_argument("--step", type=float, help="quantization step in channel standard deviations (analytic mode)")
    enc.add_argument("--mode", choices=["learned", "analytic"], default=None)
    enc.add_argument("--steps", type=int, default=None, help="number of DDIM steps the decoder will run")
    model_options(enc)

    dec = sub.add_parser("decode", help="reconstruct an image from a bitstream file (or a folder's .dfcx files)")
    dec.add_argument("input", type=Path, help="a bitstream file, or a folder of .dfcx files")
    dec.add_argument("output", type=Path, help="output image (PNG), or the output folder")
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
            print(json.dumps(describe(read_bitstream(args.input), args.max_pixels, args.max_steps), indent=2))
            return 0
        if args.input.is_dir():
            return _folder(args)
        if args.output.is_dir():  # as `cp FILE DIR`: the name a folder run would give it there
            args.output = args.output / (args.input.stem + _batch(args.command).output_suffix)
        _check_output(args.command, args.input, args.output)
        codec = _load_codec(args)
        if args.command == "encode":
            options = _encode_options(args)
            result = codec.encode(args.input, **options)
            write_atomically(args.output, result.data)
            print(f"{args.output}: {len(result.data)} bytes, {result.bpp:.4f} bpp, t={result.t}, "
                  f"{result.steps} steps, {result.mode} mode, {result.timings['total']:.2f} s")
            if _above_target(result.bpp, options):
                print(f"note: the target {options['target_bpp']:g} bpp is not reachable for this image: "
                      "this is its smallest file", file=sys.stderr)
        else:
            result = codec.decode(read_bitstream(args.input))
            write_png(args.output, result.image)
            print(f"{args.output}: {result.image.width}x{result.image.height}, {result.bpp:.4f} bpp, "
                  f"t={result.header['t']}, {result.timings['total']:.2f} s")
        return 0
    except KeyboardInterrupt:
        print("interrupted (a folder run resumes where it stopped when run again)", file=sys.stderr)
        return 130
    except Exception as exc:
        if not _bad_input(exc):
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 1


def _folder(args) -> int:
    """encode/decode DIR OUT_DIR: every file of DIR not done yet, a progress bar, one line per bad file."""
    from tqdm import tqdm

    batch = _batch(args.command)(args.input, args.output)
    codec = _load_codec(args)
    options = _encode_options(args) if args.command == "encode" else {}
    failed = skipped = above = 0
    with tqdm(total=len(batch), desc=args.command, unit="file", file=sys.stderr, dynamic_ncols=True) as bar:
        for row in batch.run(codec, **options):
            if row.error:
                failed += 1
                bar.write(f"error: {row.file}: {row.error}", file=sys.stderr)
            skipped += row.skipped
            above += not row.error and _above_target(row.bpp, options)
            bar.update()
    print(f"{batch.summary}: {len(batch) - skipped - failed} {args.command}d, {skipped} already done, {failed} failed"
          + (f"; {above} above the target bpp (not reachable for them: their smallest files)" if above else ""))
    return 1 if failed else 0


def _load_codec(args):
    from codec.core.diffusion_codec import DiffusionCodec

    codec = DiffusionCodec.load(args.backbone, args.adapter, getattr(args, "mode", None), device=args.device,
                                dtype=args.dtype, max_pixels=args.max_pixels, max_steps=args.max_steps)
    print(codec.backbone_notice, file=sys.stderr)
    return codec


def _encode_options(args) -> dict:
    rate = dict(lam=args.lam, target_bpp=args.bpp, step=args.step)
    if all(value is None for value in rate.values()):
        rate["target_bpp"] = 0.1
    return dict(rate, mode=args.mode, steps=args.steps)


def _batch(command: str) -> type:
    """The folder run of a command, which also names its outputs (output_suffix)."""
    return EncodeBatch if command == "encode" else DecodeBatch


def _check_output(command: str, source: Path, output: Path) -> None:
    """Refuse, before any model loads, an output that would overwrite the input (`encode photo.png
    photo.png` replaced the photo by its bitstream) or that is named for another kind of file."""
    if source.is_file() and output.is_file() and os.path.samefile(source, output):
        raise ValueError(f"The output {output} is the input file, which it would overwrite; give another output name.")
    if command == "encode":
        from codec.data.datasets import IMAGE_SUFFIXES

        if output.suffix.lower() in IMAGE_SUFFIXES:
            raise ValueError(f"{output.name} is named like an image, but encode writes a bitstream: "
                             f"name it {output.stem}{EncodeBatch.output_suffix}.")
    elif output.suffix.lower() != DecodeBatch.output_suffix:
        raise ValueError(f"decode writes a lossless PNG: name the output {output.stem}{DecodeBatch.output_suffix}, "
                         f"not {output.name}.")


def _above_target(bpp: float | None, options: dict) -> bool:
    """A file above its --bpp target: rate control returns the lowest rate's file when even that
    overshoots (a tiny image, whose container alone is more bits than the target allows)."""
    target = options.get("target_bpp")
    return target is not None and bpp is not None and bpp > target


def _bad_input(exc: Exception) -> bool:
    """Errors of bad input or settings, reported in one line: ValueError (BitstreamError, ImageError
    and BatchError are ones), OSError, and BackboneUnavailable -- looked up only when the backbone
    module was imported (info imports neither it nor torch; a module not imported raised nothing)."""
    backbone = sys.modules.get("codec.core.backbone")
    return isinstance(exc, (ValueError, OSError)) or (backbone is not None and isinstance(exc, backbone.BackboneUnavailable))


if __name__ == "__main__":
    status = main()
    # Python's shutdown runs full garbage collections over every object torch and diffusers
    # created, 0.2 s of a 2.3 s encode (benchmarks/cli_startup.py); frozen objects are left to the
    # operating system. Everything else of the shutdown still runs (atexit, flushing, closing).
    gc.freeze()
    sys.exit(status)
