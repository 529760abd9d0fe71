"""Results tab: the study's leaderboard, plots and rater statistics, refreshed while it is open.

All statistics come from `study.analysis.analyse` (the same pipeline as `python -m study scores`
and the export); this module only lays them out and caches them until a new vote arrives.
"""

from __future__ import annotations

import threading
import time

import gradio as gr
import pandas as pd
import yaml

from ui.context import AppContext

REFRESH_S = 15
BOOTSTRAP_CHOICES = [200, 1000]
_EMPTY = (gr.Column(visible=False), None, None, None, "", None)  # everything but the status line
SCORES = [("Bradley-Terry", "bt"), ("JOD (Thurstone)", "jod"), ("Elo", "elo")]


def exclusion_rules(study) -> dict | None:
    """The study YAML's `exclusion:` mapping (rules such as max_catch_failure_rate), or None."""
    data = yaml.safe_load(study.cfg.source.read_text(encoding="utf-8")) or {}
    return data.get("exclusion")


class _Cache:
    """The last analysis per option set, recomputed only when the votes table changed."""

    def __init__(self):
        self._lock = threading.Lock()
        self._entries: dict = {}

    def get(self, key, compute):
        with self._lock:
            if key not in self._entries:
                self._entries = {key: compute()}  # keep one entry: the options most recently asked for
            return self._entries[key]


def build_results_tab(ctx: AppContext, blocks: gr.Blocks, tab: gr.Tab) -> gr.Timer | None:
    """Lays out the tab (call inside it) and returns its refresh timer, which starts when the tab
    is selected; the app stops it when another tab is (raters' pages never query the votes)."""
    if ctx.study is None:
        gr.Markdown("No study is configured on this Space (setting `study_file`).")
        return None
    study = ctx.study
    rules = exclusion_rules(study)
    gr.Markdown(f"### {study.cfg.title}\nScores with 95% bootstrap intervals. Catch trials never enter the scores; "
                "raters who break the study's exclusion rules stay in the data, marked.")
    with gr.Row():
        exclude = gr.Checkbox(value=bool(rules), label="Apply the exclusion rules", interactive=bool(rules),
                              info=", ".join(f"{k} = {v}" for k, v in (rules or {}).items()) or "the study sets none")
        bootstrap = gr.Dropdown(BOOTSTRAP_CHOICES, value=BOOTSTRAP_CHOICES[0], label="Bootstrap rounds")
        score = gr.Radio(SCORES, value="bt", label="Score in the plot")
        refresh = gr.Button("Refresh", size="sm")
    status = gr.Markdown("Open this tab to load the results.", elem_id="results-status")
    with gr.Column(visible=False) as panel:  # shown once there is something to score
        board = gr.Dataframe(label="Leaderboard", interactive=False, elem_id="leaderboard")
        with gr.Row(equal_height=False):
            preference = gr.Plot(label="Preference against bitrate", elem_id="preference-plot")
            matrix = gr.Plot(label="Win matrix: P(row preferred over column)", elem_id="win-matrix")
        bitrate = gr.Markdown(elem_id="bitrate-model")
        raters = gr.Dataframe(label="Raters (pseudonymous ids)", interactive=False, elem_id="rater-stats")
    timer = gr.Timer(REFRESH_S, active=False)
    cache = _Cache()

    def show(apply_rules: bool, rounds: int, score_key: str):
        from study import analysis, plots, ratings

        votes = study.votes_frame()
        if votes.empty:
            return "No votes yet: take part in the Study tab, then come back.", *_EMPTY
        key = (len(votes), str(votes["timestamp"].iloc[-1]), bool(apply_rules), int(rounds))
        try:
            result = cache.get(key, lambda: analysis.analyse(votes, rules=rules if apply_rules else None,
                                                             bootstrap=int(rounds)))
        except (ratings.VoteTableError, ValueError) as exc:
            return f"Not enough data to score yet: {exc}", *_EMPTY
        s = result.settings
        summary = (f"**{s['n_votes_scored']}** scored votes from **{s['n_raters_scored']}** raters "
                   f"({s['n_votes_total'] - s['n_votes_scored']} set aside: catch trials or excluded raters; "
                   f"{s['n_raters_excluded']} raters excluded). {int(rounds)} bootstrap rounds. "
                   f"Updated {time.strftime('%H:%M:%S')}.")
        order = list(result.board["condition"])
        heatmap = plots.win_matrix_heatmap(ratings.win_rate_matrix(result.scoring).loc[order, order],
                                           ratings.count_matrix(result.scoring).loc[order, order])
        try:
            curve = plots.preference_vs_bitrate(result.board, score=score_key)
        except ValueError:
            curve = None  # no bitrates in the conditions
        return (summary, gr.Column(visible=True), _rounded(result.board), curve, heatmap, _bitrate_text(result),
                _rounded(result.raters))

    def open_tab(apply_rules: bool, rounds: int, score_key: str):
        return *show(apply_rules, rounds, score_key), gr.Timer(active=True)

    def open_if_linked(apply_rules: bool, rounds: int, score_key: str, request: gr.Request):
        """A page opened at ?tab=results shows the results at once (no select event fires there)."""
        if request.query_params.get("tab") != "results":
            return [gr.skip()] * (len(outputs) + 1)
        return open_tab(apply_rules, rounds, score_key)

    inputs = [exclude, bootstrap, score]
    outputs = [status, panel, board, preference, matrix, bitrate, raters]
    common = dict(api_visibility="private", show_progress="minimal", concurrency_id="results", concurrency_limit=1)
    for event in (refresh.click, timer.tick, exclude.change, bootstrap.change, score.change):
        event(show, inputs, outputs, **common)
    tab.select(open_tab, inputs, [*outputs, timer], **common)
    blocks.load(open_if_linked, inputs, [*outputs, timer], **common)
    return timer


def _rounded(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.round(3)


def _bitrate_text(result) -> str:
    """The paper's claim in numbers: is A preferred over B even when B gets `bpp_ratio` times the bits?"""
    model = result.bitrate
    if model is None or model.pairs.empty:
        return ""
    beta = model.beta.iloc[0]
    lines = [f"**Bitrate-controlled Bradley-Terry.** Doubling a side's bitrate adds "
             f"{beta['beta_per_doubling']:.2f} [{beta['beta_lo']:.2f}, {beta['beta_hi']:.2f}] log-odds.", ""]
    for _, row in model.pairs.iterrows():
        lines.append(f"- P({row['method_a']} preferred over {row['method_b']} with {model.bpp_ratio:g}x the bitrate) = "
                     f"{row['p_at_ratio']:.2f} [{row['p_at_ratio_lo']:.2f}, {row['p_at_ratio_hi']:.2f}]")
    return "\n".join(lines)
