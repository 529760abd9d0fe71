"""The Results tab in a real headless Chromium at 1280x800 and 390x844, on the app serving the
export study (tests/export's results_app): closed until the admin token is given; then the
leaderboard with human headers, every column reachable on a phone without the page itself
overflowing sideways, the careless rater flagged. Screenshots go to artifacts/screenshots/."""
from __future__ import annotations

import pytest

from tests.export.conftest import export_study, results_app  # noqa: F401  (fixtures)
from tests.ui.conftest import ADMIN_TOKEN
from tests.ui.test_ui_browser import SHOTS, VIEWPORTS, browser  # noqa: F401  (fixture)

pytestmark = pytest.mark.browser
HEADERS = ["Rank (UB)", "Method", "Bits per pixel", "Bradley-Terry [95% CI]", "Votes", "Win rate", "Tie rate"]


@pytest.mark.parametrize("label", list(VIEWPORTS))
def test_results_tab_reads_on_desktop_and_phone(browser, results_app, label):  # noqa: F811
    from playwright.sync_api import expect

    size = VIEWPORTS[label]
    page = browser.new_page(viewport=size)
    try:
        page.goto(results_app[0] + "/?tab=results", wait_until="load")
        expect(page.locator("#results-status")).to_contain_text("Results are private", timeout=60_000)
        expect(page.locator("#leaderboard table")).to_have_count(0)
        page.locator("#results-token input").fill(ADMIN_TOKEN)
        page.locator("#results-unlock").click()
        board = page.locator("#leaderboard table")
        expect(board).to_be_visible(timeout=120_000)
        assert [h.strip() for h in board.locator("th").all_inner_texts()] == HEADERS
        assert board.locator("tbody tr").count() == 4
        # Too few votes for a stable rank: said above the table.
        expect(page.locator("#results-warning")).to_contain_text("Too few votes for a stable rank")
        # The rater who failed every catch trial is flagged, and the rule that excluded them named.
        raters = page.locator("#rater-stats")
        expect(raters).to_contain_text("failed 100% of the catch trials")
        expect(raters).to_contain_text("max_catch_failure_rate = 0.5")

        # The leaderboard fits the screen, all seven columns (at 390 px too: 302 of 302 px measured);
        # the page never scrolls sideways; each column of each table can be scrolled into view.
        wide, box = page.evaluate("(() => { const e = document.querySelector('#leaderboard .results-table');"
                                  " return [e.scrollWidth, e.clientWidth]; })()")
        assert wide <= box + 1, (wide, box)
        assert page.evaluate("document.documentElement.scrollWidth") <= size["width"] + 1
        for table in ("#leaderboard", "#pair-stats", "#rater-stats"):
            for th in page.locator(f"{table} th").all():
                th.scroll_into_view_if_needed()
                box = th.bounding_box()
                assert box and box["x"] >= -1 and box["x"] + min(box["width"], 60) <= size["width"] + 1, (table, th)
        page.evaluate("window.scrollTo(0, 0); document.querySelectorAll('.results-table').forEach(e => e.scrollLeft = 0)")
        SHOTS.mkdir(parents=True, exist_ok=True)
        # The tab refreshes itself every 15 s: shoot between two refreshes.
        page.wait_for_function("() => !document.querySelector('.pending')", timeout=60_000)
        page.screenshot(path=str(SHOTS / f"results-{label}.png"), full_page=True)
    finally:
        page.close()
