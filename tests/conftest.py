"""Suite-wide settings. Tiny test models run much faster on one thread, and several torch
processes (servers, subprocesses) share the 2 cores: oversubscribed OpenMP threads spin and
can slow a test down by 40x, so every process in the suite uses one intra-op thread."""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

torch.set_num_threads(1)


# The real app (tests/ui/conftest.py's running_app) shared by tests/ui and tests/export: its
# fixtures are defined once, here, above both. A conftest that imported them would register a
# second fixture of each name, and a test process running both folders would start a second
# server and overwrite SERVER with it (seen: test_ui_worker stopped the other server's model
# process, and its decode went on).
import pytest  # noqa: E402

from tests.ui.conftest import (MAX_PIXELS, MAX_UPLOAD_MB, QUEUE_SIZE, SERVER, WORKER_MEMORY_MB,  # noqa: E402
                               running_app)


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    """Base URL of a running app serving the demo study (votes in a fresh SQLite file)."""
    tmp = tmp_path_factory.mktemp("app")
    with running_app(
        tmp, APP_MAX_PIXELS=str(MAX_PIXELS), APP_MAX_UPLOAD_MB=str(MAX_UPLOAD_MB), APP_QUEUE_SIZE=str(QUEUE_SIZE),
        APP_WORKER_MEMORY_MB=str(WORKER_MEMORY_MB), APP_STUDY_FILE="assets/studies/demo.yaml",
        # These tests vote as fast as they can; the study API's rate limits have tests of their own.
        STUDY_LIMIT_VOTE_PER_SESSION="1000/1000",
    ) as (proc, url):
        SERVER.update(pid=proc.pid, results=tmp / "results", url=url)
        yield url


@pytest.fixture(scope="session")
def client(server):
    from gradio_client import Client

    return Client(server + "/", verbose=False)


@pytest.fixture(scope="session")
def study_votes(server) -> int:
    """Three anonymous raters finish a demo-study session each through the mounted study API;
    returns the number of votes acknowledged."""
    import httpx

    api = server + "/api/study"
    acknowledged = 0
    with httpx.Client(timeout=30) as http:
        info = http.get(api + "/").raise_for_status().json()
        for rater in range(3):
            st = http.post(api + "/sessions", json={"params": {}}).raise_for_status().json()
            token = st["token"]
            http.post(f"{api}/sessions/{token}/consent",
                      json={"agree": True, "version": info["consent_version"]}).raise_for_status()
            while (trial := http.get(f"{api}/sessions/{token}/trial")).status_code == 200:
                choice = "left" if (trial.json()["id"] + rater) % 3 else "right"
                vote = http.post(f"{api}/sessions/{token}/votes", json={"trial_id": trial.json()["id"], "choice": choice})
                vote.raise_for_status()
                acknowledged += 1
            assert trial.status_code == 409  # finished: no more trials
    return acknowledged
