"""The Admin tab of the real app server (tests/ui's, ADMIN_TOKEN set): its events are not in the
API and gradio_client refuses them; a caller who posts to the queue directly, as the page does,
gets the same "Wrong token." and nothing else for a wrong or missing token, and the status and
the zip for the right one."""
from __future__ import annotations

import hashlib
import io
import json
import zipfile

import httpx
import pandas as pd
import pytest

from tests.ui.conftest import ADMIN_TOKEN, SERVER
from ui.admin_tab import WRONG_TOKEN

from .conftest import call, event_writing, events_by_trigger


@pytest.fixture(scope="module")
def admin(server):
    """fn_index and trigger id of the Admin tab's events: the status button's, and the export
    that fills the download (the button first says "Exporting...", then runs it)."""
    return {**events_by_trigger(server, "admin-status-btn"), "admin-export-btn": event_writing(server, "admin-export")}


def test_admin_events_are_private(client, admin):
    info = client.view_api(print_info=False, return_format="dict")
    listed = set(info["named_endpoints"]) | set(info["unnamed_endpoints"])
    for fn_index, _, dep in admin.values():
        assert dep["api_visibility"] == "private"
        assert fn_index not in listed and str(fn_index) not in listed
        with pytest.raises(ValueError):
            client.predict(ADMIN_TOKEN, fn_index=fn_index)


def test_a_wrong_or_missing_token_reveals_nothing(server, admin, study_votes):
    status, export = admin["admin-status-btn"], admin["admin-export-btn"]
    guesser = "203.0.113.7"    # one client: after its first wrong token it is slowed down (ui.admin_tab.Backoff)
    answers = [call(server, status, "wrong", client=guesser), call(server, status, "", client=guesser),
               call(server, export, None, True, 200, client=guesser),
               call(server, export, ADMIN_TOKEN[:-1], True, 200, client=guesser),
               call(server, export, ADMIN_TOKEN + " ", True, 200, client=guesser)]
    assert answers[0]["output"]["data"] == [WRONG_TOKEN]
    for answer in answers:
        message, *rest = answer["output"]["data"]     # the refusal is the message, and nothing else
        assert message == WRONG_TOKEN or message.startswith("Too many wrong tokens"), message
        assert rest in ([], [None])                   # no file


def _stored() -> tuple[int, int, int]:
    """Votes, raters and sessions in the server's database: other tests of this process (the
    browser tests) may have voted on the same server before this one."""
    import sqlite3

    with sqlite3.connect(SERVER["results"] / "study.db") as db:
        return tuple(db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]
                     for table in ("votes", "raters", "sessions"))


def test_the_right_token_gets_the_status_and_the_zip(server, admin, study_votes):
    votes, raters, sessions = _stored()
    assert votes >= study_votes and raters >= 3 and sessions >= 3
    answer = call(server, admin["admin-status-btn"], ADMIN_TOKEN)
    assert answer["success"], answer
    assert f"{votes} votes from {raters} raters in {sessions} sessions" in answer["output"]["data"][0]

    answer = call(server, admin["admin-export-btn"], ADMIN_TOKEN, True, 200)
    assert answer["success"], answer
    message, download = answer["output"]["data"]
    assert "manifest.json" in message and download["orig_name"] == "demo-export.zip"
    archive = httpx.get(download["url"], timeout=60).raise_for_status().content
    with zipfile.ZipFile(io.BytesIO(archive)) as zf:
        root = zf.namelist()[0].split("/")[0]
        manifest = json.loads(zf.read(f"{root}/manifest.json"))
        listed = {e["path"]: e["sha256"] for e in manifest["files"]}
        assert {"votes.csv", "votes.parquet", "trials.json", "raters.csv", "scores/scores.tex",
                "scores/preference_vs_bitrate.pdf"} <= set(listed)
        for path, digest in listed.items():
            assert hashlib.sha256(zf.read(f"{root}/{path}")).hexdigest() == digest, path
        votes = pd.read_parquet(io.BytesIO(zf.read(f"{root}/votes.parquet")))
    assert len(votes) == _stored()[0] == manifest["counts"]["votes"]
    assert not votes["rater"].str.contains("ui-test-rater").any()   # the raters' own ids never leave


def test_token_matches_only_the_exact_token():
    from ui.admin_tab import token_matches

    assert token_matches(ADMIN_TOKEN, ADMIN_TOKEN)
    for given in (None, "", ADMIN_TOKEN[:-1], ADMIN_TOKEN + "x", ADMIN_TOKEN.upper(), 12345):
        assert not token_matches(given, ADMIN_TOKEN), given
