"""Bjontegaard deltas between two rate-quality curves: BD-rate (percent) and BD-quality (e.g. dB)."""

from __future__ import annotations

import math

import numpy as np
from scipy.interpolate import PchipInterpolator

def _curve(rates, quality) -> tuple[np.ndarray, np.ndarray]:
    r, q = np.asarray(rates, float), np.asarray(quality, float)
    if r.shape != q.shape or r.size < 2 or np.any(r <= 0) or not np.all(np.isfinite(q)):
        raise ValueError("a BD curve needs at least two points with positive rates and finite quality")
    order = np.argsort(q)
    return np.log(r[order]), q[order]


def bd_rate(anchor_rates, anchor_quality, test_rates, test_quality) -> float:
    """Bjontegaard delta rate in percent: the test's average rate difference at equal quality.

    Piecewise cubic (monotone) interpolation of log rate over quality, integrated over the
    quality range both curves cover, as in the common reference implementations (the 'pchip'
    variant of JVET/AOM CTC tools). Negative means the test needs fewer bits.
    """
    lr1, q1 = _curve(anchor_rates, anchor_quality)
    lr2, q2 = _curve(test_rates, test_quality)
    if np.any(np.diff(q1) <= 0) or np.any(np.diff(q2) <= 0):
        raise ValueError("quality must differ between the points of a curve")
    lo, hi = max(q1[0], q2[0]), min(q1[-1], q2[-1])
    if hi <= lo:
        raise ValueError("the two curves do not overlap in quality")
    mean1 = PchipInterpolator(q1, lr1).integrate(lo, hi) / (hi - lo)
    mean2 = PchipInterpolator(q2, lr2).integrate(lo, hi) / (hi - lo)
    return float((math.exp(mean2 - mean1) - 1) * 100)


def bd_quality(anchor_rates, anchor_quality, test_rates, test_quality) -> float:
    """Bjontegaard delta quality (e.g. BD-PSNR in dB): the test's average gain at equal rate."""
    r1, r2 = np.log(np.asarray(anchor_rates, float)), np.log(np.asarray(test_rates, float))
    q1, q2 = np.asarray(anchor_quality, float), np.asarray(test_quality, float)
    o1, o2 = np.argsort(r1), np.argsort(r2)
    r1, q1, r2, q2 = r1[o1], q1[o1], r2[o2], q2[o2]
    if min(r1.size, r2.size) < 2 or np.any(np.diff(r1) <= 0) or np.any(np.diff(r2) <= 0):
        raise ValueError("a BD curve needs at least two points with distinct rates")
    lo, hi = max(r1[0], r2[0]), min(r1[-1], r2[-1])
    if hi <= lo:
        raise ValueError("the two curves do not overlap in rate")
    mean1 = PchipInterpolator(r1, q1).integrate(lo, hi) / (hi - lo)
    mean2 = PchipInterpolator(r2, q2).integrate(lo, hi) / (hi - lo)
    return float(mean2 - mean1)


def msssim_db(value: float) -> float:
    """MS-SSIM on a dB scale, -10 log10(1 - MS-SSIM), the usual axis for BD and plots."""
    return float("inf") if value >= 1 else -10 * math.log10(1 - value)


def bd_tables(results: dict) -> dict:
    """{metric: {test: {anchor: BD-rate % or None}}} for PSNR and MS-SSIM (dB)."""
    tables = {}
    for metric, key, transform in (("psnr", "psnr-rgb", float), ("ms-ssim", "ms-ssim-rgb", msssim_db)):
        table = {}
        for test, t in results.items():
            table[test] = {}
            for anchor, a in results.items():
                try:
                    value = bd_rate(
                        a["results"]["bpp"], [transform(v) for v in a["results"][key]],
                        t["results"]["bpp"], [transform(v) for v in t["results"][key]],
                    )
                except ValueError:
                    value = None  # too few distinct points, or no overlap
                table[test][anchor] = None if test == anchor else value
        tables[metric] = table
    return tables


def bd_markdown(tables: dict) -> str:
    lines = []
    for metric, table in tables.items():
        anchors = list(table)
        lines += [f"### BD-rate (%) on {metric.upper()}: row method against column anchor (negative = fewer bits)", "",
                  "| method | " + " | ".join(anchors) + " |", "|---" * (len(anchors) + 1) + "|"]
        for test, row in table.items():
            cells = ["" if test == a else ("n/a" if row[a] is None else f"{row[a]:+.1f}") for a in anchors]
            lines.append(f"| {test} | " + " | ".join(cells) + " |")
        lines.append("")
    lines.append("n/a: the curves do not overlap in quality, or a curve has fewer than two distinct points.")
    return "\n".join(lines) + "\n"
