"""The Study tab's page fragments (no browser): progress text, completion page, MTurk form."""
from study.service import SessionState
from ui.study_tab import done_html, progress_html


def state(status="completed", index=40, code="C0DE", redirect=None):
    return SessionState("t" * 43, status, index, 40, None, "1", code, redirect)


def test_progress_reads_trial_n_of_total():
    assert "Trial <b>7</b> of <b>40</b>" in progress_html(state("active", index=6))


def test_completion_page_code_redirect_and_escaping():
    page = done_html(state(code="<b>x", redirect="https://app.prolific.com/submissions/complete?cc=X&y=\"1\""), {})
    assert "&lt;b&gt;x" in page and "<b>x" not in page
    assert 'data-redirect="https://app.prolific.com/submissions/complete?cc=X&amp;y=&quot;1&quot;"' in page
    assert "No answers were recorded" in done_html(state("declined", code=None), {})


def test_mturk_form_posts_only_to_mturk():
    params = {"assignmentId": "A1", "turkSubmitTo": "https://workersandbox.mturk.com"}
    page = done_html(state(), params)
    assert 'action="https://workersandbox.mturk.com/mturk/externalSubmit"' in page and 'value="A1"' in page
    for other in ("https://evil.example", "http://www.mturk.com", "https://mturk.com.evil.example"):
        assert "externalSubmit" not in done_html(state(), {**params, "turkSubmitTo": other})
    assert "externalSubmit" not in done_html(state("screened_out"), params)
