"""Export helpers for authors: safe CSV, JSON, a LaTeX score table, a SHA-256 manifest.

Functions take DataFrames and paths; reading the database and checking the admin token belong
to the callers (``python -m study export``, the Admin tab).
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd

_REPO = Path(__file__).resolve().parent.parent

# A spreadsheet treats a cell starting with one of these as a formula (CSV injection, OWASP).
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def neutralise_cell(value):
    """Prefix a text cell that a spreadsheet would run as a formula with a single quote."""
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        return "'" + value
    return value


def neutralise(frame: pd.DataFrame) -> pd.DataFrame:
    """Copy with every text cell and column name neutralised. Numeric columns stay numbers:
    a float column is written as digits, never evaluated as a formula."""
    out = frame.copy()
    for column in out.columns:
        if not (pd.api.types.is_numeric_dtype(out[column]) or pd.api.types.is_bool_dtype(out[column])):
            out[column] = out[column].astype(object).map(neutralise_cell)
    out.columns = [neutralise_cell(str(c)) for c in out.columns]
    return out


def write_csv(frame: pd.DataFrame, path: str | Path) -> Path:
    """Write a neutralised CSV (UTF-8, no index). Every text cell is quoted: pandas leaves a
    cell holding a bare carriage return unquoted, which would split the row in a reader."""
    path = Path(path)
    neutralise(frame).to_csv(path, index=False, quoting=csv.QUOTE_NONNUMERIC)
    return path


def _plain(value):
    """JSON-safe scalar: numpy types to Python, NaN and infinities to null."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.ndarray):   # e.g. a 0-d array where a model without bootstrap has no interval
        return _plain(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is pd.NA or value is pd.NaT:
        return None
    return value


def records(frame: pd.DataFrame) -> list[dict]:
    """DataFrame rows as JSON-safe dicts."""
    return _plain(frame.to_dict(orient="records"))


def write_json(obj, path: str | Path) -> Path:
    """Write any mix of dicts, lists and DataFrames as strict JSON (no NaN)."""
    def convert(o):
        if isinstance(o, pd.DataFrame):
            return records(o)
        if isinstance(o, dict):
            return {k: convert(v) for k, v in o.items()}
        if isinstance(o, (list, tuple)):
            return [convert(v) for v in o]
        return o

    path = Path(path)
    path.write_text(json.dumps(_plain(convert(obj)), indent=2, allow_nan=False) + "\n", encoding="utf-8")
    return path


_LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def latex_escape(text) -> str:
    return "".join(_LATEX_SPECIAL.get(ch, ch) for ch in str(text))


def to_latex(board: pd.DataFrame, *, caption: str | None = None, label: str | None = None,
             decimals: dict | None = None) -> str:
    """A booktabs table of a ``ratings.leaderboard``: every score as ``value [lo, hi]``."""
    decimals = {"elo": 0, "bt": 0, "jod": 2, **(decimals or {})}
    models = [m for m in ("elo", "bt", "jod") if m in board.columns]
    names = {"elo": "Elo", "bt": "Bradley--Terry", "jod": "JOD"}
    header = ["Condition", "Method"] + (["bpp"] if "bpp" in board.columns and board["bpp"].notna().any() else [])
    header += [f"{names[m]} [95\\% CI]" for m in models] + ["Votes", "Win rate", "Rank (UB)"]

    def score(row, m):
        d = decimals[m]
        if pd.isna(row[f"{m}_lo"]):
            return f"{row[m]:.{d}f}"
        return f"{row[m]:.{d}f} [{row[f'{m}_lo']:.{d}f}, {row[f'{m}_hi']:.{d}f}]"

    lines = []
    for _, row in board.iterrows():
        cells = [latex_escape(row["condition"]), latex_escape(row["method"])]
        if "bpp" in header:
            cells.append("--" if pd.isna(row["bpp"]) else f"{row['bpp']:.3f}")
        cells += [score(row, m) for m in models]
        cells += [f"{int(row['votes'])}", f"{row['win_rate']:.3f}", f"{int(row['rank_ub'])}"]
        lines.append(" & ".join(cells) + r" \\")
    out = [r"\begin{table}[t]", r"\centering"]
    if caption:
        out.append(rf"\caption{{{latex_escape(caption)}}}")
    if label:
        out.append(rf"\label{{{label}}}")
    out += [r"\begin{tabular}{ll" + "r" * (len(header) - 2) + "}", r"\toprule", " & ".join(header) + r" \\",
            r"\midrule", *lines, r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    return "\n".join(out) + "\n"


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def software_version(root: str | Path = _REPO) -> str:
    """The git commit of the checkout (``+dirty`` when it has local changes), else "unknown"."""
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return commit + ("+dirty" if dirty else "")


def build_manifest(files, *, root: str | Path, study_yaml: str | None, software_version: str,
                   extra: dict | None = None) -> dict:
    """Manifest of an export: each file's path relative to ``root``, size and SHA-256, the study
    YAML text with its own hash, and the software version that made the files."""
    root = Path(root)
    entries = []
    for f in sorted(Path(p) for p in files):
        entries.append({"path": f.resolve().relative_to(root.resolve()).as_posix(), "bytes": f.stat().st_size,
                        "sha256": sha256_file(f)})
    manifest = {"software_version": software_version, "files": entries}
    if study_yaml is not None:
        manifest["study_yaml"] = study_yaml
        manifest["study_yaml_sha256"] = hashlib.sha256(study_yaml.encode("utf-8")).hexdigest()
    manifest.update(extra or {})
    return manifest
