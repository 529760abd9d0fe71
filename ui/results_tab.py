"""Results tab: the study's leaderboard, plots, per-pair, per-image and rater tables, refreshed
while it is open; behind the admin token unless the study file sets `results_public: true`.

All statistics come from `study.analysis.analyse` (the same pipeline as `python -m study scores`
and the export); this module only lays them out as an author reads them (human headers, rounded
numbers, HTML tables that scroll sideways on a phone instead of hiding columns) and caches them
until a new vote arrives. Rater ids shown are study.pseudonym's keyed pseudonyms. Its events run
outside the queue, as the Admin tab's: a wrong token is answered at once and never holds a place.
"""

from __future__ import annotations

import html
import threading
import time

import gradio as gr
import pandas as pd
import yaml

from ui.admin_tab import refusal
from ui.context import AppContext

REFRESH_S = 15
BOOTSTRAP_CHOICES = [200, 1000]
SCORES = [("Bradley-Terry", "bt"), ("JOD (Thurstone)", "jod"), ("Elo", "elo")]
SCORE_NAMES = {"bt": "Bradley-Terry", "jod": "JOD", "elo": "Elo"}
PRIVATE = ("Results are private while the study runs: enter the admin token. "
           "(`results_public: true` in the study file shows them to everyone.)")
# Tables scroll sideways inside their box on a narrow screen; numbers never wrap.
CSS = """
.results-table { overflow-x: auto; max-width: 100%; }
.results-table table { border-collapse: collapse; font-size: 0.9rem; width: 100%; }
.results-table th, .results-table td { padding: 0.3rem 0.5rem; border-bottom: 1px solid #ddd; text-align: left;
  vertical-align: top; }
.results-table th { font-weight: 600; }
.results-table td.num { text-align: right; white-space: nowrap; font-variant-numeric: tabular-nums; }
.results-table td { white-space: nowrap; }
.results-table .ci { color: #666; font-size: 0.8em; white-space: nowrap; display: block; }
.results-table tr.unstable td { background: #fff6e0; }
@media (max-width: 640px) { .results-table table { font-size: 0.72rem; }
  .results-table th, .results-table td { padding: 0.15rem 0.1rem; } }
"""
_OUT = 10  # outputs of `show` after the status line


def exclusion_rules(study) -> dict | None:
    """The study YAML's `exclusion:` mapping (rules such as max_catch_failure_rate), or None."""
    data = yaml.safe_load(study.cfg.source.read_text(encoding="utf-8")) or {}
    return data.get("exclusion")


class _Cache:
    """The value for the key most recently asked for (an analysis, a rendered page), recomputed
    only when the key (the votes table's length and last vote, the options) changes."""

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
    is selected and the results may be shown; the app stops it when another tab is."""
    if ctx.study is None:
        gr.Markdown("No study is configured on this Space (setting `study_file`).")
        return None
    study = ctx.study
    public = study.cfg.results_public
    rules = exclusion_rules(study)
    gr.Markdown(f"### {html.escape(study.cfg.title)}\nScores with 95% bootstrap intervals. Catch trials never "
                "enter the scores; raters who break the study's exclusion rules stay in the data, marked.")
    with gr.Row(visible=not public):
        token = gr.Textbox(label="Admin token", type="password", max_lines=1, elem_id="results-token", scale=3)
        unlock = gr.Button("Show results", elem_id="results-unlock", scale=1)
    with gr.Row():
        exclude = gr.Checkbox(value=bool(rules), label="Apply the exclusion rules", interactive=bool(rules),
                              info=", ".join(f"{k} = {v}" for k, v in (rules or {}).items()) or "the study sets none")
        bootstrap = gr.Dropdown(BOOTSTRAP_CHOICES, value=BOOTSTRAP_CHOICES[0], label="Bootstrap rounds")
        score = gr.Radio(SCORES, value="bt", label="Score")
        refresh = gr.Button("Refresh", size="sm")
    status = gr.Markdown(PRIVATE if not public else "Open this tab to load the results.", elem_id="results-status")
    with gr.Column(visible=False) as panel:  # shown once there is something to score
        warning = gr.Markdown(elem_id="results-warning")
        board = gr.HTML(elem_id="leaderboard", css_template=CSS)
        gr.Markdown("**Rank (UB)**: 1 + the number of conditions whose 95% interval lies wholly above this one's, "
                    "i.e. the best rank the data allow (lmarena's convention); equal ranks are not yet told apart. "
                    "Win rate counts a tie as half a win; tie rate is the share of \"can't tell\" answers.")
        with gr.Row(equal_height=False):
            # The figures as the export writes them (plots.png): one PNG, the same in the page and the zip.
            with gr.Column(min_width=340):   # side by side only where both fit, else one above the other
                preference = gr.HTML(elem_id="preference-plot")
            with gr.Column(min_width=340):
                matrix = gr.HTML(elem_id="win-matrix")
        bitrate = gr.Markdown(elem_id="bitrate-model")
        pairs = gr.HTML(elem_id="pair-stats", css_template=CSS)
        images = gr.HTML(elem_id="per-image", css_template=CSS)
        raters = gr.HTML(elem_id="rater-stats", css_template=CSS)
    timer = gr.Timer(REFRESH_S, active=False)
    analyses = _Cache()
    pages = _Cache()        # the rendered outputs, so a refresh with nothing new costs one query
    rendering = threading.Lock()

    def check(given, request) -> str:
        """"" when the results may be shown to this caller, else what to tell them. An empty box
        is no guess; a token is checked as the Admin tab's, with the same back-off per client."""
        if public:
            return ""
        if not given:
            return PRIVATE
        return refusal(ctx, given, request) or ""

    def show(given, apply_rules: bool, rounds: int, score_key: str, request: gr.Request):
        return answer(check(given, request), apply_rules, rounds, score_key)

    def answer(why_not: str, apply_rules: bool, rounds: int, score_key: str):
        if why_not:
            return why_not, gr.Column(visible=False), *[None] * (_OUT - 1)
        votes = study.votes_frame()
        if votes.empty:
            return "No votes yet.", gr.Column(visible=False), *[None] * (_OUT - 1)
        key = (len(votes), str(votes["timestamp"].iloc[-1]), bool(apply_rules), int(rounds))
        if not rendering.acquire(blocking=False):
            # Another caller is rendering: answer at once, without waiting or piling up work.
            return "Updating the results; they refresh by themselves.", *[gr.skip()] * _OUT
        try:
            return pages.get((key, score_key), lambda: render(votes, key, bool(apply_rules), int(rounds), score_key))
        finally:
            rendering.release()

    def render(votes, key, apply_rules: bool, rounds: int, score_key: str):
        from study import analysis, plots, ratings

        try:
            result = analyses.get(key, lambda: analysis.analyse(votes, rules=rules, drop_excluded=apply_rules,
                                                                bootstrap=rounds))
        except (ratings.VoteTableError, ValueError) as exc:
            return f"Not enough data to score yet: {exc}", gr.Column(visible=False), *[None] * (_OUT - 1)
        s = result.settings
        summary = (f"**{s['n_votes_scored']}** scored votes from **{s['n_raters_scored']}** raters "
                   f"({s['n_votes_total'] - s['n_votes_scored']} set aside: catch trials"
                   f"{' or excluded raters' if apply_rules else ''}). {rounds} bootstrap rounds. "
                   f"Updated {time.strftime('%H:%M:%S')}.")
        order = list(result.board["condition"])
        heatmap = plots.win_matrix_heatmap(ratings.win_rate_matrix(result.scoring).loc[order, order],
                                           ratings.count_matrix(result.scoring).loc[order, order])
        try:
            curve = _figure(plots.preference_vs_bitrate(result.board, score=score_key), "Preference against bitrate",
                            f"{SCORE_NAMES[score_key]} score with 95% intervals against bits per pixel, per method")
        except ValueError:
            curve = ""  # no bitrates in the conditions
        notes = analysis.unstable(result.board, score_key)
        return (summary, gr.Column(visible=True), _warning(result.board, notes),
                leaderboard_html(result.board, score_key, notes), curve,
                _figure(heatmap, "Win matrix: P(row preferred over column)",
                        "share of votes preferring the row's condition over the column's"),
                _bitrate_text(result), pairs_html(result.tests), images_html(result),
                raters_html(result.raters, rules, apply_rules))

    def open_tab(given, apply_rules: bool, rounds: int, score_key: str, request: gr.Request):
        why_not = check(given, request)
        return *answer(why_not, apply_rules, rounds, score_key), gr.Timer(active=not why_not)

    def open_if_linked(given, apply_rules: bool, rounds: int, score_key: str, request: gr.Request):
        """A page opened at ?tab=results shows the results at once (no select event fires there)."""
        if request.query_params.get("tab") != "results":
            return [gr.skip()] * (len(outputs) + 1)
        return open_tab(given, apply_rules, rounds, score_key, request)

    inputs = [token, exclude, bootstrap, score]
    outputs = [status, panel, warning, board, preference, matrix, bitrate, pairs, images, raters]
    # Outside the queue, as the Admin tab: a caller without the token is answered at once and never
    # takes a place a visitor's request needs; rendering is one at a time (the lock above).
    common = dict(api_visibility="private", show_progress="minimal", queue=False)
    for event in (refresh.click, exclude.change, bootstrap.change, score.change):
        event(show, inputs, outputs, **common)
    timer.tick(show, inputs, outputs, **{**common, "show_progress": "hidden"})  # no fading every 15 s
    for event in (tab.select, unlock.click, token.submit):
        event(open_tab, inputs, [*outputs, timer], **common)
    blocks.load(open_if_linked, inputs, [*outputs, timer], **common)
    return timer


def _figure(fig, title: str, alt: str) -> str:
    """A figure as an <img> of the PNG the export writes (study.plots.png), under its heading."""
    import base64

    from study import plots

    data = base64.b64encode(plots.png(fig)).decode()
    return (f'<h4>{html.escape(title)}</h4><img src="data:image/png;base64,{data}" alt="{html.escape(alt)}" '
            'style="width:100%;height:auto;max-width:720px">')


# ------------------------------------------------------------------------------------------- tables


def _table(headers: list[str], rows: list[list], numeric: set[int] = frozenset(), row_classes=None) -> str:
    """An HTML table; every cell is escaped text unless it is already ``_Html``."""
    def cell(value, k):
        text = value if isinstance(value, _Html) else html.escape("" if value is None else str(value))
        return f'<td class="num">{text}</td>' if k in numeric else f"<td>{text}</td>"

    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = []
    for n, row in enumerate(rows):
        cls = f' class="{row_classes[n]}"' if row_classes and row_classes[n] else ""
        body.append(f"<tr{cls}>" + "".join(cell(v, k) for k, v in enumerate(row)) + "</tr>")
    return f'<div class="results-table"><table><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table></div>'


class _Html(str):
    """Markup built here from escaped parts."""


def _pct(x) -> str:
    return "–" if pd.isna(x) else f"{100 * x:.0f}%"


def _score(value, lo, hi, model: str) -> _Html:
    d = 2 if model == "jod" else 0
    point = html.escape(f"{value:.{d}f}")
    if pd.isna(lo):
        return _Html(point)
    return _Html(f'{point} <span class="ci">[{lo:.{d}f}, {hi:.{d}f}]</span>')


def _bpp(row) -> _Html:
    if pd.isna(row["bpp"]):
        return _Html("–")
    target = row.get("target_bpp")
    return _Html(f"{row['bpp']:.3f}" + ("" if pd.isna(target) else f'<span class="ci">target {target:g}</span>'))


def leaderboard_html(board: pd.DataFrame, model: str, notes: pd.Series) -> str:
    """Rank (UB), method, bpp, score [95% CI], votes, win and tie rate, ordered by ``model``."""
    from study import ratings

    table = board.assign(rank=ratings.rank_ub(board[f"{model}_lo"], board[f"{model}_hi"]), note=notes)
    table = table.sort_values(model, ascending=False, kind="stable")
    rows = [[int(r["rank"]), f"{r['method']}{' ⚠' if r['note'] else ''}", _bpp(r),
             _score(r[model], r[f"{model}_lo"], r[f"{model}_hi"], model), int(r["votes"]), _pct(r["win_rate"]),
             _pct(r["tie_rate"])] for _, r in table.iterrows()]
    headers = ["Rank (UB)", "Method", "Bits per pixel", f"{SCORE_NAMES[model]} [95% CI]", "Votes", "Win rate",
               "Tie rate"]
    return _table(headers, rows, numeric={0, 2, 3, 4, 5, 6},
                  row_classes=["unstable" if n else "" for n in table["note"]])


def _warning(board: pd.DataFrame, notes: pd.Series) -> str:
    shaky = [f"`{board['condition'].iat[i]}`: {n}" for i, n in enumerate(notes) if n]
    if not shaky:
        return ""
    return ("⚠ **Too few votes for a stable rank** (rows marked ⚠); these ranks and intervals will still move:\n"
            + "\n".join(f"- {s}" for s in shaky))


def pairs_html(tests: pd.DataFrame) -> str:
    rows = [[f"{r['condition_a']} vs {r['condition_b']}", int(r["votes"]), int(r["wins_a"]), int(r["wins_b"]),
             int(r["ties"]), _pct(r["tie_rate"]), _pct(r["win_rate_a"]),
             "–" if pd.isna(r["p_holm"]) else f"{r['p_holm']:.3g}{' *' if r['significant'] else ''}"]
            for _, r in tests.iterrows()]
    headers = ["Pair (A vs B)", "Votes", "A wins", "B wins", "Ties", "Tie rate", "A's win rate without ties",
               "p (Holm)"]
    return "<h4>Condition pairs</h4>" + _table(headers, rows, numeric=set(range(1, 8))) + \
        "<p>p: exact binomial test of A's wins against B's (ties left out), Holm-corrected; * = below 0.05.</p>"


def images_html(result) -> str:
    """Win rate of every condition on every image, and whether leaving one image out moves the top."""
    if result.images.empty:
        return ""
    per = result.images.pivot(index="condition", columns="image")
    names = list(per["votes"].columns)
    rows = []
    for condition in result.board["condition"]:
        cells = [condition]
        for name in names:
            n = per["votes"].at[condition, name] if condition in per.index else float("nan")
            cells.append("–" if pd.isna(n) else f"{_pct(per['win_rate'].at[condition, name])} (n={int(n)})")
        rows.append(cells)
    top = result.board["condition"].iat[0]
    without = result.without_image
    moved = without.loc[without["first_without"] != top]
    verdict = (f"Leaving out any one image, **{html.escape(top)}** stays first." if moved.empty else
               "Leaving out one image changes the first place: " + "; ".join(
                   f"without **{html.escape(str(r['image']))}**, **{html.escape(str(r['first_without']))}** comes first"
                   for _, r in moved.iterrows()) + ".")
    tau = without["kendall_tau"].min()
    if pd.notna(tau):
        verdict += f" The order without any one image agrees with the full order at Kendall's tau >= {tau:.2f}."
    return ("<h4>Per image: win rate (votes)</h4>" + _table(["Condition", *map(str, names)], rows,
                                                              numeric=set(range(1, len(names) + 1)))
            + f"<p>{_markdown_bold(verdict)}</p>")


def _markdown_bold(text: str) -> str:
    parts = text.split("**")
    return "".join(f"<b>{p}</b>" if k % 2 else p for k, p in enumerate(parts))


def raters_html(stats: pd.DataFrame, rules: dict | None, applied: bool) -> str:
    """Every rater (pseudonym), careless ones first, with why they were flagged or excluded, and
    which exclusion rules applied."""
    from study import quality

    active = quality.check_rules(rules)
    excluded = stats["excluded"] if "excluded" in stats.columns else pd.Series(False, index=stats.index)
    table = stats.assign(_x=excluded.astype(bool)).sort_values(["_x", "careless", "rater"],
                                                               ascending=[False, False, True])
    rows = []
    for _, r in table.iterrows():
        catch = "–" if not r["catch_trials"] else f"{int(r['catch_failures'])}/{int(r['catch_trials'])}"
        repeat = "–" if not r["repeats"] else _pct(r["repeat_consistency"])
        ms = "–" if pd.isna(r["median_response_ms"]) else f"{r['median_response_ms'] / 1000:.1f} s"
        outlier = "–" if pd.isna(r["outlier_score"]) else f"{r['outlier_score']:.2f}"
        flag = ("⚠ " + r["careless_reason"]) if r["careless"] else "–"
        verdict = f"yes: {r['exclusion_reason']}" if r["_x"] else "no"
        rows.append([r["rater"], int(r["votes"]), catch, repeat, ms, _pct(r["side_bias"]), outlier, flag, verdict])
    headers = ["Rater (pseudonym)", "Votes", "Catch trials failed", "Repeats alike", "Median response",
               "Same side", "Outlier score", "Looks careless", "Excluded"]
    if not active:
        rule_text = "The study file sets no exclusion rules: nobody is excluded."
    else:
        listed = ", ".join(f"{k} = {v:g}" for k, v in active.items())
        n = int(excluded.sum())
        rule_text = (f"Exclusion rules of the study file: {listed}; {n} rater{'s' if n != 1 else ''} break them, and "
                     + ("their votes are left out of the scores." if applied else
                        "the scores include them (rules not applied)."))
    return ("<h4>Raters</h4>" + _table(headers, rows, numeric={1, 2, 3, 4, 5, 6})
            + f"<p>{html.escape(rule_text)} \"Looks careless\" uses fixed limits (a flag to look at, not a rule): "
            "catch failures over 50%, repeats alike under 50%, median response under 0.6 s, the same side over 90% "
            "of the time, outlier score over 1.5 (among 8 raters or more).</p>")


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
