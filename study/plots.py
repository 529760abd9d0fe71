"""Figures for papers and the Results tab: preference against bitrate, win-rate heatmap.

Figures are built with ``matplotlib.figure.Figure`` (Agg canvas, no pyplot global state), so
they are safe in a multi-threaded server; ``gr.Plot`` accepts them as they are.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import NullFormatter, NullLocator

_LABELS = {"elo": "Elo", "bt": "Bradley-Terry score (Elo scale)", "jod": "JOD"}


def preference_vs_bitrate(board: pd.DataFrame, score: str = "bt", title: str | None = None) -> Figure:
    """One line per method: score against bpp (log axis) with CI bars, from ``ratings.leaderboard``.

    Points sit at the measured bitrates; the axis is labelled once per bitrate group (the target
    bpp when the board has ``target_bpp``, else measured rates within 10% of each other), rounded
    to two significant digits, and a label that would overlap its neighbour is left out."""
    if score not in _LABELS or score not in board.columns:
        raise ValueError(f"the leaderboard has no {score!r} score")
    data = board.dropna(subset=["bpp", score])
    if data.empty:
        raise ValueError("no condition has a bitrate (columns bpp_a, bpp_b) to plot against")
    fig = Figure(figsize=(6.0, 4.2), layout="constrained")
    FigureCanvasAgg(fig)  # a renderer, to measure the tick labels
    ax = fig.add_subplot()
    markers = "osD^v<>ph*"
    for k, (method, rows) in enumerate(data.sort_values("bpp").groupby("method", sort=True)):
        (line,) = ax.plot(rows["bpp"], rows[score], marker=markers[k % len(markers)], linewidth=1.5, markersize=5,
                          label=str(method))
        lo, hi = rows[f"{score}_lo"].to_numpy(float), rows[f"{score}_hi"].to_numpy(float)
        if np.isfinite(lo).any():
            # The bar spans the interval itself, centred on it: a bootstrap percentile interval need
            # not contain the full-data estimate (a skewed resampling distribution), and errorbar's
            # offsets from the point would then be negative, which matplotlib refuses.
            ax.errorbar(rows["bpp"], (lo + hi) / 2, yerr=(hi - lo) / 2, fmt="none", ecolor=line.get_color(),
                        capsize=3, linewidth=1.5)
    ax.set_xscale("log")
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.xaxis.set_minor_locator(NullLocator())
    ticks = bitrate_ticks(data)
    ax.set_xticks(ticks, labels=[f"{t:.2g}" for t in ticks])
    ax.set_xlim(data["bpp"].min() / 1.25, data["bpp"].max() * 1.25)
    ax.set_xlabel("bits per pixel (measured, log scale)")
    ax.set_ylabel(f"{_LABELS[score]}, 95% CI")
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(title="method", fontsize="small")
    if title:
        ax.set_title(title)
    drop_overlapping_labels(fig, ax.xaxis)
    return fig


def bitrate_ticks(data: pd.DataFrame, within: float = 1.1) -> np.ndarray:
    """One tick per group of measured bitrates (each within ``within`` times the group's first):
    at the group's target bpp when all its conditions share one (column ``target_bpp``) and it
    lies among them, else at the group's median measured bpp."""
    rows = data.sort_values("bpp")
    targets = rows["target_bpp"] if "target_bpp" in rows.columns else pd.Series(np.nan, index=rows.index)
    groups: list[list[int]] = []
    for k, r in enumerate(rows["bpp"].to_numpy(float)):
        if groups and r <= rows["bpp"].iat[groups[-1][0]] * within:
            groups[-1].append(k)
        else:
            groups.append([k])
    ticks = []
    for group in groups:
        rates, aims = rows["bpp"].to_numpy(float)[group], targets.to_numpy(float)[group]
        one = aims[0] if np.isfinite(aims).all() and np.all(aims == aims[0]) else np.nan
        near = np.isfinite(one) and rates.min() / within <= one <= rates.max() * within
        ticks.append(float(one) if near else float(np.median(rates)))
    return np.unique(ticks)


def drop_overlapping_labels(fig: Figure, axis) -> None:
    """Blank every tick label of ``axis`` that would overlap the last one kept (left to right),
    measured as drawn; constrained layout only ever makes room, so what is apart stays apart."""
    fig.draw_without_rendering()
    ticks = axis.get_major_ticks()
    kept = None
    labels = []
    for tick in ticks:
        label = tick.label1
        box = label.get_window_extent().expanded(1.15, 1.0) if label.get_text() else None
        if box is not None and kept is not None and box.overlaps(kept):
            labels.append("")
            continue
        labels.append(label.get_text())
        kept = box if box is not None else kept
    axis.set_ticks(axis.get_ticklocs(), labels=labels)


def win_matrix_heatmap(win_rate: pd.DataFrame, counts: pd.DataFrame | None = None, title: str | None = None) -> Figure:
    """Heatmap of P(row preferred over column) from ``ratings.win_rate_matrix``; cells show the
    percentage (and the number of comparisons when ``counts`` is given); grey = never compared."""
    K = len(win_rate)
    side = min(12.0, 2.5 + 0.5 * K)
    fig = Figure(figsize=(side + 1.2, side), layout="constrained")
    ax = fig.add_subplot()
    values = np.ma.masked_invalid(win_rate.to_numpy(dtype=float))
    image = ax.imshow(values, cmap=colormaps["RdBu"].with_extremes(bad="0.85"), vmin=0.0, vmax=1.0)
    ax.set_xticks(range(K), labels=[str(c) for c in win_rate.columns], rotation=45, ha="right")
    ax.set_yticks(range(K), labels=[str(c) for c in win_rate.index])
    ax.set_xlabel("opponent (column)")
    ax.set_ylabel("condition (row)")
    if K <= 20:
        for i in range(K):
            for j in range(K):
                if values.mask is not np.ma.nomask and values.mask[i, j]:
                    continue
                text = f"{100 * values[i, j]:.0f}%"
                if counts is not None:
                    text += f"\nn={int(counts.iat[i, j])}"
                dark = abs(values[i, j] - 0.5) > 0.3
                ax.text(j, i, text, ha="center", va="center", fontsize=7, color="white" if dark else "black")
    fig.colorbar(image, ax=ax, label="P(row preferred over column)")
    if title:
        ax.set_title(title)
    return fig


def png(fig: Figure) -> bytes:
    """The figure as the PNG that ``save_figure`` writes (150 dpi), e.g. for a web page."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=150, metadata={"Software": None})
    return buffer.getvalue()


def save_figure(fig: Figure, stem: str | Path) -> list[Path]:
    """Write ``stem.png`` (150 dpi) and ``stem.pdf`` (vector, no creation date so reruns are
    byte-identical); returns both paths."""
    stem = Path(stem)
    png_path, pdf = stem.with_suffix(".png"), stem.with_suffix(".pdf")
    png_path.write_bytes(png(fig))
    fig.savefig(pdf, metadata={"CreationDate": None, "Creator": None, "Producer": None})
    return [png_path, pdf]
