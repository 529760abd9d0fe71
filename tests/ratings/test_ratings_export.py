"""CSV neutralisation, JSON, LaTeX, manifest, plots."""

import csv
import hashlib
import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from study import export, plots, ratings
from study.simulate import simulate_votes


def test_formula_cells_are_neutralised(tmp_path):
    frame = pd.DataFrame({"rater": ["=HYPERLINK(\"x\")", "+1", "-2+3", "@SUM(A1)", "\tcmd", "\rx", "safe", "a=b"],
                          "score": [-1.5, 2.0, -3.0, 0.0, 1.0, 1.0, 1.0, 1.0]})
    path = export.write_csv(frame, tmp_path / "v.csv")
    with open(path, newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle))
    assert len(rows) == 1 + len(frame)  # the carriage return did not split a row
    back = pd.read_csv(path, keep_default_na=False)
    assert back["rater"].tolist()[:6] == ["'=HYPERLINK(\"x\")", "'+1", "'-2+3", "'@SUM(A1)", "'\tcmd", "'\rx"]
    assert back["rater"].tolist()[6:] == ["safe", "a=b"]
    assert back["score"].tolist() == frame["score"].tolist()  # numbers stay numbers, negative ones too
    assert export.write_csv(pd.DataFrame({"=cmd()": [1]}), tmp_path / "h.csv").read_text().startswith("\"'=cmd()")
    assert frame["rater"].iloc[0] == "=HYPERLINK(\"x\")"  # the caller's frame is untouched


@pytest.fixture(scope="module")
def board():
    info = pd.DataFrame({"method": ["ours", "ours", "jpeg_&_co", "jpeg_&_co"], "bpp": [0.1, 0.2, 0.1, 0.2]},
                        index=["ours@0.1", "ours@0.2", "jpeg@0.1", "jpeg@0.2"])
    votes = ratings.validate_votes(simulate_votes(pd.Series([0.5, 1.0, -1.0, -0.5], index=info.index), 600,
                                                  seed=1, info=info))
    return votes, ratings.leaderboard(votes, bootstrap=50)


def test_latex_table(board):
    _, table = board
    tex = export.to_latex(table, caption="Scores 100% real", label="tab:scores")
    assert tex.startswith("\\begin{table}") and tex.rstrip().endswith("\\end{table}")
    assert "jpeg\\_\\&\\_co" in tex and "100\\% real" in tex and "\\label{tab:scores}" in tex
    assert tex.count("\\\\") == len(table) + 1  # header + one line per condition
    first = table.iloc[0]
    assert f"{first['bt']:.0f} [{first['bt_lo']:.0f}, {first['bt_hi']:.0f}]" in tex


def test_json_is_strict(tmp_path, board):
    _, table = board
    path = export.write_json({"scores": table, "x": np.float64("nan"), "n": np.int64(3)}, tmp_path / "s.json")
    data = json.loads(path.read_text())
    assert data["x"] is None and data["n"] == 3 and len(data["scores"]) == len(table)
    assert "NaN" not in path.read_text()


def test_manifest(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "a.csv").write_text("x\n1\n")
    (tmp_path / "sub" / "b.json").write_bytes(b"{}")
    manifest = export.build_manifest([tmp_path / "sub" / "b.json", tmp_path / "a.csv"], root=tmp_path,
                                     study_yaml="id: demo\n", software_version="abc123")
    assert [f["path"] for f in manifest["files"]] == ["a.csv", "sub/b.json"]
    assert manifest["files"][0]["sha256"] == hashlib.sha256(b"x\n1\n").hexdigest()
    assert manifest["files"][1]["bytes"] == 2
    assert manifest["study_yaml"] == "id: demo\n" and manifest["software_version"] == "abc123"
    assert manifest["study_yaml_sha256"] == hashlib.sha256(b"id: demo\n").hexdigest()
    assert export.software_version() != ""


def test_plots_png_and_pdf(tmp_path, board):
    votes, table = board
    order = list(table["condition"])
    paths = plots.save_figure(plots.preference_vs_bitrate(table), tmp_path / "pref")
    paths += plots.save_figure(plots.win_matrix_heatmap(ratings.win_rate_matrix(votes).loc[order, order],
                                                        ratings.count_matrix(votes).loc[order, order]),
                               tmp_path / "wins")
    for path in paths:
        if path.suffix == ".png":
            with Image.open(path) as image:
                assert image.width > 400 and image.height > 300
        else:
            assert path.read_bytes().startswith(b"%PDF")
    again = plots.save_figure(plots.preference_vs_bitrate(table), tmp_path / "pref2")
    assert again[1].read_bytes() == paths[1].read_bytes()  # reproducible PDF
    with pytest.raises(ValueError, match="bitrate"):
        plots.preference_vs_bitrate(table.assign(bpp=np.nan))


def _label_boxes(fig, dpi):
    fig.set_dpi(dpi)
    fig.draw_without_rendering()
    labels = [t for t in fig.axes[0].get_xticklabels() if t.get_text()]
    return labels, [t.get_window_extent() for t in labels]


@pytest.mark.parametrize("targets", [True, False])
def test_bitrate_tick_labels_are_grouped_rounded_and_never_overlap(targets):
    # Measured rates a few percent apart at each target (the "0.19940.211235"), and two
    # groups close on a log axis.
    bpp = [0.1994, 0.211235, 0.2051, 0.41, 0.38, 0.0512, 0.055, 0.06]
    board = pd.DataFrame({"condition": [f"c{k}" for k in range(8)], "method": list("abcabcab"), "bpp": bpp,
                          "bt": np.linspace(900, 1100, 8), "bt_lo": np.linspace(850, 1050, 8),
                          "bt_hi": np.linspace(950, 1150, 8)})
    if targets:
        board["target_bpp"] = [0.2, 0.2, 0.2, 0.4, 0.4, 0.05, 0.05, 0.06]
    fig = plots.preference_vs_bitrate(board)
    for dpi in (100, 150):   # as in the page and as exported
        labels, boxes = _label_boxes(fig, dpi)
        texts = [t.get_text() for t in labels]
        assert len(texts) >= 3 and all(len(t.replace("0.", "").lstrip("0")) <= 2 for t in texts), texts
        assert "0.2" in texts if targets else "0.21" in texts
        for a in range(len(boxes)):
            for b in range(a + 1, len(boxes)):
                assert not boxes[a].overlaps(boxes[b]), (texts[a], texts[b])


def test_an_interval_that_leaves_out_its_estimate_is_drawn_as_it_is(tmp_path):
    """A bootstrap percentile interval need not contain the full-data estimate (here the second
    point lies above its interval): the bar spans exactly lo..hi and the marker sits at the estimate."""
    board = pd.DataFrame({"condition": ["a1", "a2", "b1"], "method": ["a", "a", "b"], "bpp": [0.05, 0.1, 0.05],
                          "bt": [1000.0, 1100.0, 950.0], "bt_lo": [980.0, 1020.0, np.nan],
                          "bt_hi": [1030.0, 1080.0, np.nan]})
    fig = plots.preference_vs_bitrate(board)
    ax = fig.axes[0]
    markers = {line.get_label(): line.get_ydata().tolist() for line in ax.lines if not line.get_label().startswith("_")}
    assert markers == {"a": [1000.0, 1100.0], "b": [950.0]}
    (bars,) = [c for c in ax.collections if len(c.get_segments())]
    assert sorted((seg[0][1], seg[1][1]) for seg in bars.get_segments()) == [(980.0, 1030.0), (1020.0, 1080.0)]
    assert plots.save_figure(fig, tmp_path / "pref")  # the export writes it (it raised before)
