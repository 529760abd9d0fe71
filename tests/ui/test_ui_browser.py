"""The whole visitor flow in a real headless Chromium: upload, compress, download the bitstream,
decode it in the Decode tab. Screenshots (desktop 1280x800 and phone 390x844) go to
artifacts/screenshots/, which .ci/run lists at the end."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from codec.core.bitstream import MAGIC
from tests.ui.conftest import ROOT

pytestmark = pytest.mark.browser

SHOTS = ROOT / "artifacts" / "screenshots"
VIEWPORTS = {"desktop": {"width": 1280, "height": 800}, "phone": {"width": 390, "height": 844}}
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-quic"]


@pytest.fixture(scope="module")
def browser():
    chromium = shutil.which("chromium")
    if chromium is None:
        message = "chromium is not installed (apt-get install -y chromium)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, headless=True, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def _shoot(page, name: str) -> None:
    """Full-page screenshots of the current state at both viewport sizes."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    for label, size in VIEWPORTS.items():
        page.set_viewport_size(size)
        # Gallery images load lazily: scroll through the page so every one is there in the shot.
        height = page.evaluate("document.body.scrollHeight")
        for y in range(0, height, size["height"] // 2):
            page.evaluate(f"window.scrollTo(0, {y})")
            page.wait_for_timeout(150)
        page.evaluate("window.scrollTo(0, 0)")
        page.wait_for_timeout(300)
        page.screenshot(path=str(SHOTS / f"ui-{name}-{label}.png"), full_page=True)
    page.set_viewport_size(VIEWPORTS["desktop"])


def test_upload_compress_download_decode(browser, server, small_png, tmp_path):
    from playwright.sync_api import expect

    expect.set_options(timeout=120_000)  # the first compression on a busy 2-core CI machine is slow
    page = browser.new_page(viewport=VIEWPORTS["desktop"], accept_downloads=True)
    page.set_default_timeout(120_000)
    page.goto(server + "/", wait_until="domcontentloaded")
    page.wait_for_selector("#compress-btn")
    _shoot(page, "start")

    page.locator("#compress-input input[type=file]").set_input_files(str(small_png))
    expect(page.locator("#compress-input img").first).to_be_visible()
    page.locator("#compress-btn").click()

    # The slider shows two images; the table has a row per method (ours + each checked baseline); the
    # gallery and the crops show every baseline that could run here (the tiny test backbone has no
    # fitted prior for the naive latent baseline, which the table then marks as unavailable).
    expect(page.locator("#compare-slider img")).to_have_count(2)
    n_checked = page.locator("#methods input[type=checkbox]:checked").count()
    assert n_checked == 5
    table = page.locator("#results-table")
    expect(table.locator("[role=grid]")).to_have_attribute("aria-rowcount", str(n_checked + 2))  # + header row
    expect(table).to_contain_text("JPEG")
    gallery = page.locator("#baseline-gallery img")
    expect(gallery.first).to_be_visible()
    n_ran = gallery.count()
    assert n_ran in (n_checked - 1, n_checked)  # JPEG, WebP, AVIF and HEIC always run
    if n_ran < n_checked:
        expect(table).to_contain_text("unavailable")
    expect(page.locator("#trajectory img")).to_be_visible()
    expect(page.locator("#crop-gallery img")).to_have_count(n_ran + 2)  # original + ours + baselines
    expect(page.locator("#compress-summary")).to_contain_text("bpp")
    # A click on the overview up and left of its centre moves the crop there (the sliders follow).
    # (gradio draws the 256x160 overview unscaled in the middle of its frame)
    crop_x, crop_y = page.locator("#crop-x input[type=number]"), page.locator("#crop-y input[type=number]")
    assert crop_x.input_value() == crop_y.input_value() == "50"
    overview = page.locator("#crop-overview img")
    box = overview.bounding_box()
    overview.click(position={"x": box["width"] / 2 - 64, "y": box["height"] / 2 - 40})
    expect(crop_y).not_to_have_value("50")
    assert abs(int(crop_x.input_value()) - 25) <= 2 and abs(int(crop_y.input_value()) - 25) <= 2
    _shoot(page, "compressed")

    with page.expect_download() as info:
        page.locator("#bitstream-file a").first.click()
    bitstream = tmp_path / info.value.suggested_filename
    info.value.save_as(bitstream)
    assert bitstream.read_bytes().startswith(MAGIC) and bitstream.suffix == ".dfcx"
    with page.expect_download() as info:
        page.locator("#png-file a").first.click()
    ours_png = tmp_path / "ours.png"
    info.value.save_as(ours_png)

    page.get_by_role("tab", name="Decode").click()
    page.locator("#decode-input input[type=file]").set_input_files(str(bitstream))
    page.locator("#decode-btn").click()
    expect(page.locator("#decoded-image img")).to_be_visible()
    expect(page.locator("#decode-summary")).to_contain_text("bpp")
    expect(page.locator("#decode-header")).to_contain_text("backbone_fingerprint")
    with page.expect_download() as info:
        page.locator("#decoded-png a").first.click()
    decoded_png = tmp_path / "decoded.png"
    info.value.save_as(decoded_png)
    with Image.open(ours_png) as a, Image.open(decoded_png) as b:
        assert np.array_equal(np.asarray(a), np.asarray(b))  # the page's decode = the compress tab's image
    _shoot(page, "decoded")
    page.close()


def test_results_tab_shows_the_study_votes(browser, server, study_votes):
    """After three raters finished a session through the mounted study API, a page linked to
    ?tab=results shows, with the admin token, the leaderboard, both plots and the rater table."""
    from playwright.sync_api import expect

    from tests.ui.conftest import ADMIN_TOKEN

    assert study_votes >= 30
    expect.set_options(timeout=60_000)
    page = browser.new_page(viewport=VIEWPORTS["desktop"])
    page.goto(server + "/?tab=results", wait_until="domcontentloaded")
    expect(page.locator("#results-status")).to_contain_text("Results are private")  # until the admin token is given
    page.locator("#results-token input").fill(ADMIN_TOKEN)
    page.locator("#results-unlock").click()
    expect(page.locator("#results-status")).to_contain_text("from 3 raters")
    expect(page.locator("#leaderboard")).to_contain_text("diffusion")
    expect(page.locator("#leaderboard")).to_contain_text("webp")
    expect(page.locator("#preference-plot img")).to_be_visible()
    expect(page.locator("#win-matrix img")).to_be_visible()
    expect(page.locator("#rater-stats")).to_contain_text("Looks careless")
    _shoot(page, "results")
    page.close()


def test_admin_export_needs_the_token(browser, server, study_votes, tmp_path):
    """A wrong token gets "Wrong token." and no file; the right one a zip whose manifest lists the
    SHA-256 of every file in it."""
    import hashlib
    import json
    import zipfile

    from playwright.sync_api import expect

    from tests.ui.conftest import ADMIN_TOKEN

    expect.set_options(timeout=120_000)
    page = browser.new_page(viewport=VIEWPORTS["desktop"], accept_downloads=True)
    page.goto(server + "/?tab=admin", wait_until="domcontentloaded")
    page.locator("#admin-token input").fill("not-the-token")
    page.locator("#admin-export-btn").click()
    expect(page.get_by_text("Wrong token.").first).to_be_visible()
    expect(page.locator("#admin-export a")).to_have_count(0)

    page.wait_for_timeout(1500)  # after one wrong token this client may try again after 1 s
    page.locator("#admin-token input").fill(ADMIN_TOKEN)
    page.locator("#admin-status-btn").click()
    expect(page.locator("#admin-message")).to_contain_text("from 3 raters")
    page.locator("#admin-export-btn").click()
    expect(page.locator("#admin-export a").first).to_be_visible()
    _shoot(page, "admin")
    with page.expect_download() as info:
        page.locator("#admin-export a").first.click()
    archive = tmp_path / "export.zip"
    info.value.save_as(archive)
    with zipfile.ZipFile(archive) as zf:
        names = zf.namelist()
        root = names[0].split("/")[0]
        manifest = json.loads(zf.read(f"{root}/manifest.json"))
        listed = {entry["path"]: entry["sha256"] for entry in manifest["files"]}
        assert {"votes.csv", "votes.parquet", "scores/scores.csv", "scores/scores.tex",
                "scores/preference_vs_bitrate.pdf"} <= set(listed)
        for path, digest in listed.items():
            assert hashlib.sha256(zf.read(f"{root}/{path}")).hexdigest() == digest, path
        assert "conditions:" in manifest["study_yaml"]
    page.close()
