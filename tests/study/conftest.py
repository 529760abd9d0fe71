"""Fixtures for the study tests: a small real study (two 64x64 crops, stimuli encoded with
Pillow), and databases: a SQLite file, and a fresh PostgreSQL database per test on the server
named by TEST_POSTGRES_URL (scripts/start_postgres.sh). In CI a missing server fails the test."""
from __future__ import annotations

import io
import os
import secrets
import shutil
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from PIL import Image

from study import config, stimuli

PHOTOS = Path(__file__).resolve().parents[2] / "assets" / "studies" / "demo" / "images"
IN_CI = os.environ.get("CI", "").lower() == "true"


def need(what: str) -> None:
    """Skip locally, fail in CI: a missing server or browser must not pass silently there."""
    if IN_CI:
        pytest.fail(f"{what} is required in CI")
    pytest.skip(f"{what} not available")


def pillow_coder(image: Image.Image, method: str, bpp: float):
    """Real encodings at a quality derived from the target (the measured bpp is what counts):
    the study code does not care how its stimuli were made, and this needs no codec."""
    quality = max(2, min(95, int(bpp * 30)))
    buf = io.BytesIO()
    image.save(buf, format="JPEG" if method == "jpeg" else "WEBP", quality=quality)
    data = buf.getvalue()
    return Image.open(io.BytesIO(data)).convert("RGB"), data, 8 * len(data) / (image.width * image.height)


STUDY_YAML = """\
id: {id}
title: Test study
images:
  - {{key: astro, path: images/astronaut.png, crop: [96, 32, 64, 64], credit: NASA}}
  - {{key: creek, path: images/creek.png, crop: [100, 100, 64, 64], credit: A. Berasategi}}
conditions:
  - {{method: jpeg, bpp: 0.5}}
  - {{method: jpeg, bpp: 1.5}}
  - {{method: webp, bpp: 0.5}}
  - {{method: webp, bpp: 2}}
trials_per_session: {trials}
catch_trials: {{count: {catch}, method: jpeg, bpp: 0.1}}
repeat_trials: {repeats}
scheduler: {scheduler}
sessions_per_rater: {per_rater}
max_catch_failures: {max_fail}
consent:
  version: "2"
  text: "I agree."
  purpose: Which compressed image looks closer to the original.
  duration_minutes: 5
  pay: 1.00 GBP
  contact: Test Researcher, research@example.org
  data_stored: your answers, response times, screen size and browser name; no name or e-mail
  retention: five years
  withdrawal: close the page at any time; ask the contact to delete your answers
platform: {platform}
"""


def vote_at_once(svc, token: str, trial_id: int, n: int = 8) -> list:
    """n votes on one trial released together (a double click, two tabs), alternating left and
    right; the answers in order."""
    barrier = threading.Barrier(n)

    def cast(i):
        barrier.wait()
        return svc.vote(token, trial_id, ("left", "right")[i % 2])

    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(cast, range(n)))


def make_study(folder: Path, *, trials=40, catch=3, repeats=2, scheduler="balanced", per_rater=1,
               max_fail="null", platform="{kind: none}", study_id="t1") -> Path:
    """Write a study file into `folder`, build its stimuli once, return the file's path."""
    images = folder / "images"
    if not images.exists():
        shutil.copytree(PHOTOS, images)
    path = folder / f"{study_id}.yaml"
    path.write_text(STUDY_YAML.format(id=study_id, trials=trials, catch=catch, repeats=repeats,
                                      scheduler=scheduler, per_rater=per_rater, max_fail=max_fail,
                                      platform=platform))
    stimuli.build(config.load(path), log=lambda _m: None, coder=pillow_coder)
    return path


@pytest.fixture(scope="session")
def study_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("study")


@pytest.fixture(scope="session")
def study_file(study_dir) -> Path:
    return make_study(study_dir)


@pytest.fixture
def postgres_url():
    """A fresh, empty PostgreSQL database for one test, dropped afterwards."""
    admin = os.environ.get("TEST_POSTGRES_URL")
    if not admin:
        need("TEST_POSTGRES_URL (run: eval \"$(bash scripts/start_postgres.sh)\")")
    import psycopg
    from sqlalchemy.engine import make_url

    url = make_url(admin)
    name = f"study_{secrets.token_hex(6)}"
    conninfo = dict(host=url.host, port=url.port, user=url.username, password=url.password,
                    dbname=url.database, autocommit=True)
    try:
        with psycopg.connect(**conninfo) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
    except psycopg.OperationalError as e:
        need(f"the PostgreSQL server at TEST_POSTGRES_URL ({e})")
    yield url.set(database=name).render_as_string(hide_password=False)
    with psycopg.connect(**conninfo) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'study.db'}"
    return request.getfixturevalue("postgres_url")
