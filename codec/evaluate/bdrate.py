"""Bjontegaard deltas between two rate-quality curves: BD-rate (percent) and BD-quality (e.g. dB),
and the tables of them the evaluation writes (mean curves, and per image against one anchor).

Measured curves are not always the clean increasing curves the method assumes: a codec at its
floor returns the same file for two targets (JPEG at 0.03 and 0.05 bpp), and a metric can get
worse at a higher rate. `rd_curve` keeps the points a user of the codec would choose -- the
Pareto front: no other point has a lower-or-equal rate and a higher-or-equal quality -- and
says which it dropped; `compare` reports "no overlap" where the curves share no quality range,
with the BD-quality when their rates overlap.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from scipy.interpolate import PchipInterpolator


class BDUndefined(ValueError):
    """The delta has no value for these curves (too few points, or no common range)."""


def _interval_mean(x1, y1, x2, y2, what: str) -> float:
    """Mean of y2(x) - y1(x) over the x range both strictly increasing curves cover."""
    for x in (x1, x2):
        if x.size < 2:
            raise BDUndefined("a BD curve needs at least two points")
        if np.any(np.diff(x) <= 0):
            raise BDUndefined(f"{what} must differ between the points of a curve")
    lo, hi = max(x1[0], x2[0]), min(x1[-1], x2[-1])
    if hi <= lo:
        raise BDUndefined(f"the two curves do not overlap in {what}")
    # Piecewise cubic (monotone) interpolation, integrated: the 'pchip' variant of the JVET/AOM
    # common-test-condition tools.
    mean1 = PchipInterpolator(x1, y1).integrate(lo, hi) / (hi - lo)
    mean2 = PchipInterpolator(x2, y2).integrate(lo, hi) / (hi - lo)
    return float(mean2 - mean1)


def _sorted(rates, quality, by_quality: bool):
    r, q = np.asarray(rates, float), np.asarray(quality, float)
    if r.shape != q.shape or np.any(r <= 0) or not np.all(np.isfinite(q)) or not np.all(np.isfinite(r)):
        raise BDUndefined("a BD curve needs positive rates and finite quality, as many of each")
    order = np.argsort(q if by_quality else r)
    return np.log(r[order]), q[order]


def bd_rate(anchor_rates, anchor_quality, test_rates, test_quality) -> float:
    """Bjontegaard delta rate in percent: the test's average rate difference at equal quality.

    Log rate is interpolated over quality and averaged over the quality range both curves
    cover. Negative means the test needs fewer bits. The curves must be strictly increasing
    (`rd_curve` makes them so); raises BDUndefined otherwise or when they do not overlap.
    """
    lr1, q1 = _sorted(anchor_rates, anchor_quality, by_quality=True)
    lr2, q2 = _sorted(test_rates, test_quality, by_quality=True)
    return (math.exp(_interval_mean(q1, lr1, q2, lr2, "quality")) - 1) * 100


def bd_quality(anchor_rates, anchor_quality, test_rates, test_quality) -> float:
    """Bjontegaard delta quality (e.g. BD-PSNR in dB): the test's average gain at equal rate,
    over the log-rate range both curves cover."""
    lr1, q1 = _sorted(anchor_rates, anchor_quality, by_quality=False)
    lr2, q2 = _sorted(test_rates, test_quality, by_quality=False)
    return _interval_mean(lr1, q1, lr2, q2, "rate")


def msssim_db(value: float) -> float:
    """MS-SSIM on a dB scale, -10 log10(1 - MS-SSIM), the usual axis for BD and plots."""
    return float("inf") if value >= 1 else -10 * math.log10(1 - value)


# ----------------------------------------------------------------------------------------------
# Measured curves


def rd_curve(rates, quality, name: str = "curve") -> tuple[list[float], list[float], list[str]]:
    """The Pareto front of measured (rate, quality) points, by increasing rate, and a note for
    each point dropped: without a value, repeated, or no better than a point of lower rate."""
    notes, points = [], []
    for r, q in zip(rates, quality):
        if r is None or q is None or not (math.isfinite(r) and math.isfinite(q)) or r <= 0:
            notes.append(f"{name}: the point at {r} bpp has no value, dropped")
        else:
            points.append((float(r), float(q)))
    kept: list[tuple[float, float]] = []
    # By rate, and at equal rate the best quality first: each point needs more quality than
    # every point kept before it (all of which have a lower or equal rate).
    for r, q in sorted(points, key=lambda p: (p[0], -p[1])):
        if kept and (r, q) == kept[-1]:
            notes.append(f"{name}: {r:.4g} bpp repeated (the same rate and quality twice), one dropped")
        elif kept and q <= kept[-1][1]:
            notes.append(f"{name}: {r:.4g} bpp dropped, its quality {q:.4g} is no better than "
                         f"{kept[-1][1]:.4g} at {kept[-1][0]:.4g} bpp")
        else:
            kept.append((r, q))
    return [r for r, _ in kept], [q for _, q in kept], notes


@dataclass
class BD:
    """Both deltas of a test curve against an anchor (None where undefined)."""

    rate: float | None  # percent
    quality: float | None  # in the quality axis' units
    note: str = ""  # why `rate` is None
    dropped: list[str] = field(default_factory=list)  # points left out of either curve (rd_curve)

    def as_dict(self) -> dict:
        return {"bd_rate": self.rate, "bd_quality": self.quality, "note": self.note, "dropped": self.dropped}


def compare(anchor: tuple, test: tuple, names=("anchor", "test"), quality_name: str = "quality",
            quality_unit: str = "") -> BD:
    """BD of ``test`` against ``anchor``, each a (rates, quality) pair of measured points."""
    (ra, qa, dropped_a), (rt, qt, dropped_t) = (rd_curve(*c, name=n) for c, n in zip((anchor, test), names))
    dropped = dropped_a + dropped_t
    short = [n for n, r in zip(names, (ra, rt)) if len(r) < 2]
    if short:
        return BD(None, None, f"{' and '.join(short)}: fewer than two usable points", dropped)
    try:
        quality = bd_quality(ra, qa, rt, qt)
    except BDUndefined:
        quality = None
    try:
        return BD(bd_rate(ra, qa, rt, qt), quality, "", dropped)
    except BDUndefined:
        gain = "" if quality is None else f" (BD-{quality_name} {quality:+.2f}{quality_unit})"
        return BD(None, quality, f"no overlap in {quality_name}{gain}", dropped)


# ----------------------------------------------------------------------------------------------
# Tables

# Quality axes: results-JSON key, transform to a higher-is-better scale, name, unit. SWD is lower
# is better, so it enters negated: its BD-quality is the test's SWD *reduction* (positive = better).
AXES = {
    "psnr": ("psnr-rgb", float, "PSNR", " dB"),
    "ms-ssim": ("ms-ssim-rgb", msssim_db, "MS-SSIM", " dB"),
    "swd": ("swd", lambda v: -v, "SWD", ""),
}
DEFAULT_AXES = ("psnr", "ms-ssim")


def _points(res: dict, axis: str):
    key, transform, _, _ = AXES[axis]
    values = res["results"].get(key)
    if values is None:
        return None
    return res["results"]["bpp"], [None if v is None else transform(v) for v in values]


def _cell(anchor_res: dict, test_res: dict, names, axis: str) -> dict | None:
    a, t = _points(anchor_res, axis), _points(test_res, axis)
    if a is None or t is None:
        return None
    _, _, label, unit = AXES[axis]
    return compare(a, t, names, quality_name=label, quality_unit=unit).as_dict()


def bd_tables(results: dict, axes=DEFAULT_AXES) -> dict:
    """{axis: {test: {anchor: cell}}}, cell = `BD.as_dict()` (None on the diagonal, or where a
    method has no values on that axis). ``results``: method -> compressai results JSON (bpp and
    quality lists per rate point)."""
    tables = {}
    for axis in axes:
        tables[axis] = {
            test: {anchor: None if test == anchor else _cell(a, t, (anchor, test), axis) for anchor, a in results.items()}
            for test, t in results.items()
        }
    return tables


def per_image_tables(results_by_image: dict, anchor: str, axes=DEFAULT_AXES) -> dict:
    """{axis: {image: {method: cell}}}: each method's BD against ``anchor`` on each image alone
    (``results_by_image``: image -> method -> compressai results JSON of that image), so that one
    image that drives the mean is visible."""
    return {
        axis: {
            image: {m: _cell(results[anchor], r, (f"{anchor} on {image}", f"{m} on {image}"), axis)
                    for m, r in results.items() if m != anchor}
            for image, results in results_by_image.items() if anchor in results
        }
        for axis in axes
    }


def _text(cell: dict | None) -> str:
    if cell is None:
        return "unavailable"
    return cell["note"] if cell["bd_rate"] is None else f"{cell['bd_rate']:+.1f}"


def _dropped(table: dict) -> list[str]:
    """The dropped-point notes of a table's cells, once each (they belong to a curve, not a cell)."""
    cells = [c for row in table.values() for c in row.values() if c is not None]
    return list(dict.fromkeys(note for c in cells for note in c["dropped"]))


def _markdown(title: str, header: list[str], rows: list[tuple[str, list[str]]], notes: list[str]) -> list[str]:
    lines = [title, "", "| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    lines += [f"| {name} | " + " | ".join(cells) + " |" for name, cells in rows]
    if notes:
        lines += ["", "Points left out of the curves (BD needs increasing curves):", *[f"- {n}" for n in notes]]
    return lines + [""]


def _quality_text(cell: dict | None, unit: str) -> str:
    if cell is None:
        return "unavailable"
    if cell["bd_quality"] is None:
        return cell["note"] or "no common rate range"
    return f"{cell['bd_quality']:+.2f}{unit}"


def bd_markdown(tables: dict) -> str:
    """Per axis, the BD-rate table and the BD-quality table (BD-PSNR in dB, ...): row method against
    column anchor."""
    lines = []
    for axis, table in tables.items():
        anchors = list(table)
        _, _, label, unit = AXES[axis]
        rows = [(test, ["" if test == a else _text(row[a]) for a in anchors]) for test, row in table.items()]
        lines += _markdown(f"### BD-rate (%) on {label}: row method against column anchor (negative = fewer bits)",
                           ["method", *anchors], rows, _dropped(table))
        rows = [(test, ["" if test == a else _quality_text(row[a], unit) for a in anchors]) for test, row in table.items()]
        lines += _markdown(f"### BD-{label}: row method against column anchor (positive = better at the same rate)",
                           ["method", *anchors], rows, [])
    return "\n".join(lines)


def per_image_markdown(tables: dict, anchor: str) -> str:
    """One table per axis: a row per image, a column per method, BD-rate (%) against ``anchor``;
    the last row is the median over images."""
    lines = []
    for axis, table in tables.items():
        methods = list(dict.fromkeys(m for row in table.values() for m in row))
        rows = [(image, [_text(row.get(m)) for m in methods]) for image, row in table.items()]
        medians = []
        for m in methods:
            values = [row[m]["bd_rate"] for row in table.values() if row.get(m) and row[m]["bd_rate"] is not None]
            medians.append(f"{np.median(values):+.1f}" if values else "no value on any image")
        rows.append(("**median**", medians))
        lines += _markdown(f"### BD-rate (%) on {AXES[axis][2]} per image, against {anchor} (negative = fewer bits)",
                           ["image", *methods], rows, _dropped(table))
    return "\n".join(lines)
