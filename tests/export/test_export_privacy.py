"""Where the raters' real ids may go, on the real app serving a Prolific study (tests/export's
results_app): the Results tab is closed without the admin token; its data, `export-votes` and
every file of the export bundle show raters only by the keyed pseudonym (no plain hash of any
id, however salted or formatted); the real ids are in the admin export's payments.csv alone."""
from __future__ import annotations

import hashlib
import io
import json
import zipfile

import httpx
import pandas as pd
import pytest

from study.cli import main
from tests.ui.conftest import ADMIN_TOKEN
from ui.admin_tab import WRONG_TOKEN
from ui.results_tab import PRIVATE

from .conftest import RATERS, STUDY_IDS, call, event_writing, events_by_trigger

PIDS = [pid for pid, _ in RATERS]


@pytest.fixture(scope="module")
def events(results_app):
    return {**events_by_trigger(results_app[0], "results-unlock"),
            "admin-export-btn": event_writing(results_app[0], "admin-export")}


def plain_hashes(study_id: str, platform: str, raw: str) -> set[str]:
    """What a weak pseudonym of ``raw`` could look like: the id itself, and the first 12 hex
    digits of common hashes of it, alone or with the study id and platform, in several layouts."""
    layouts = [raw, raw.upper(), f"{study_id}{raw}", f"{raw}{study_id}", f"{study_id}\0{raw}", f"{study_id}:{raw}",
               f"{study_id}/{raw}", f"{study_id}-{raw}", f"{study_id}\0{platform}\0{raw}", f"{study_id}:{platform}:{raw}",
               f"{platform}\0{raw}", f"{platform}:{raw}", f"{platform}{raw}"]
    found = {raw, raw.lower()}
    for text in layouts:
        for name in ("sha256", "sha1", "md5", "sha512", "blake2b"):
            found.add(hashlib.new(name, text.encode()).hexdigest()[:12])
    return found


def forbidden(study_id: str = "exp1") -> set[str]:
    out = set(STUDY_IDS)
    for pid in PIDS:
        out |= plain_hashes(study_id, "prolific", pid)
    return out


def assert_clean(blobs: dict[str, bytes]) -> None:
    for needle in forbidden():
        for name, blob in blobs.items():
            assert needle.encode() not in blob, (needle, name)


def results_outputs(server: str, event, token, client: str | None = None) -> dict:
    answer = call(server, event, token, True, 200, "bt", client=client)
    assert answer["success"], answer
    return answer["output"]["data"]


def test_results_are_closed_by_default(results_app, events):
    server, _ = results_app
    for token, message in ((None, PRIVATE), ("", PRIVATE), ("wrong", WRONG_TOKEN), (ADMIN_TOKEN + "x", WRONG_TOKEN)):
        data = results_outputs(server, events["results-unlock"], token)
        assert data[0] == message
        assert data[1]["visible"] is False                       # the panel stays hidden ...
        assert all(d is None for d in data[2:-1]), data          # ... and empty: no table, plot or pseudonym
        text = json.dumps(data)
        assert "jpeg" not in text and "webp" not in text         # not even the method names
    data = results_outputs(server, events["results-unlock"], ADMIN_TOKEN)
    assert data[1]["visible"] is True and "<table>" in data[3] and "Rank (UB)" in data[3]
    assert data[-1]["active"] is True                            # the refresh timer starts
    # Guessing is slowed per client, as in the Admin tab: right after a wrong token even the
    # right one is refused, with nothing shown.
    guesser = "203.0.113.99"
    assert results_outputs(server, events["results-unlock"], "wrong", client=guesser)[0] == WRONG_TOKEN
    slowed = results_outputs(server, events["results-unlock"], ADMIN_TOKEN, client=guesser)
    assert slowed[0].startswith("Too many wrong tokens") and all(d is None for d in slowed[2:-1])


def test_results_public_in_the_study_file_opens_them_without_a_token(public_results_app):
    server, _ = public_results_app
    event = events_by_trigger(server, "results-unlock")["results-unlock"]
    data = results_outputs(server, event, None)
    assert data[1]["visible"] is True and "Rank (UB)" in data[3] and 'src="data:image/png;base64,' in data[4]


def test_no_plain_hash_of_any_rater_id_in_any_output(results_app, events, export_study, tmp_path):
    server, url = results_app
    # The Results tab's data with the admin token: the tables name raters by keyed pseudonym.
    shown = json.dumps(results_outputs(server, events["results-unlock"], ADMIN_TOKEN))
    # export-votes
    assert main(["export-votes", str(export_study), "--db", url, "--out", str(tmp_path / "votes.csv")]) == 0
    votes_csv = (tmp_path / "votes.csv").read_bytes()
    pseudonyms = set(pd.read_csv(tmp_path / "votes.csv")["rater"])
    assert len(pseudonyms) == len(RATERS) and all(p in shown for p in pseudonyms)
    # Every file of the admin's export bundle but payments.csv.
    answer = call(server, events["admin-export-btn"], ADMIN_TOKEN, True, 200)
    assert answer["success"], answer
    archive = httpx.get(answer["output"]["data"][1]["url"], timeout=60).raise_for_status().content
    with zipfile.ZipFile(io.BytesIO(archive)) as zf:
        members = {name: zf.read(name) for name in zf.namelist() if not name.endswith("/payments.csv")}
        sessions = pd.read_parquet(io.BytesIO(next(v for k, v in members.items() if k.endswith("/sessions.parquet"))))
    assert set(sessions["rater"]) == pseudonyms           # one pseudonym everywhere
    assert len(members) > 20
    assert_clean({"results tab": shown.encode(), "export-votes": votes_csv, **members})


def test_payments_csv_is_only_in_the_admin_export(results_app, events, export_study, tmp_path):
    server, url = results_app
    answer = call(server, events["admin-export-btn"], ADMIN_TOKEN, True, 200)
    archive = httpx.get(answer["output"]["data"][1]["url"], timeout=60).raise_for_status().content
    with zipfile.ZipFile(io.BytesIO(archive)) as zf:
        payments = [n for n in zf.namelist() if n.endswith("/payments.csv")]
        assert len(payments) == 1
        table = pd.read_csv(io.BytesIO(zf.read(payments[0])), dtype=str, keep_default_na=False)
    assert sorted(table["participant_id"]) == sorted(PIDS) and set(table["status"]) == {"completed"}
    # Without the token the admin export gives nothing; a shared bundle (--no-payments) and the
    # Results tab have no real id at all.
    refused = call(server, events["admin-export-btn"], "wrong", True, 200)
    assert refused["output"]["data"] == [WRONG_TOKEN, None]
    out = tmp_path / "shared"
    assert main(["export", "--study", str(export_study), "--db", url, "--out", str(out), "--bootstrap", "20",
                 "--no-payments"]) == 0
    assert not list(out.rglob("payments.csv"))
    with zipfile.ZipFile(out / "exp1-export.zip") as zf:
        assert not [n for n in zf.namelist() if "payments" in n]
        assert_clean({n: zf.read(n) for n in zf.namelist()})
    assert_clean({"results tab": json.dumps(results_outputs(server, events["results-unlock"], ADMIN_TOKEN)).encode()})
