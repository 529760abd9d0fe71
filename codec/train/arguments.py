"""argparse types of the training commands: a bad number is a usage error (exit 2, naming the
option) before anything loads, not a TypeError or a run that trains nothing."""

from __future__ import annotations

import argparse
import math


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got {text!r}")
    return value


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None


def positive_float(text: str) -> float:
    value = _number(text)
    if not (0 < value < math.inf):
        raise argparse.ArgumentTypeError(f"expected a positive finite number, got {text!r}")
    return value


def non_negative_float(text: str) -> float:
    """A finite number >= 0 (e.g. 0 minutes: skip that training)."""
    value = _number(text)
    if not (0 <= value < math.inf):
        raise argparse.ArgumentTypeError(f"expected a finite number of at least 0, got {text!r}")
    return value


def crop_size(text: str) -> int:
    """A training crop: a positive multiple of 32 pixels (the VAE's and the hyperprior's strides)."""
    value = positive_int(text)
    if value % 32:
        raise argparse.ArgumentTypeError(f"expected a multiple of 32 pixels, got {text!r}")
    return value
