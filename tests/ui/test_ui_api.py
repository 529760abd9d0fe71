"""The named API endpoints of the running app, through gradio_client, with real files."""

from __future__ import annotations

import json
import os
import urllib.request
from pathlib import Path

import httpx
import numpy as np
import pytest
from gradio_client import handle_file
from gradio_client.exceptions import AppError
from PIL import Image

from tests.ui.conftest import MAX_UPLOAD_MB, QUEUE_SIZE, ROOT

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
METHODS = ["jpeg", "webp"]


def _is_png(path) -> bool:
    return Path(path).read_bytes()[:8] == PNG_MAGIC


@pytest.fixture(scope="module")
def compressed(client, small_png):
    """One /compress call shared by the tests that inspect its outputs."""
    return client.predict(handle_file(str(small_png)), 0.3, METHODS, api_name="/compress")


def test_health(server):
    with urllib.request.urlopen(server + "/health") as r:
        body = json.load(r)
    assert body["status"] == "ok"
    assert str(ROOT) not in json.dumps(body) and "/tmp" not in json.dumps(body)


@pytest.mark.parametrize("size", [(1, 1), (2000, 8), (8, 300)])
def test_tiny_and_thin_images_compress_with_na_metrics(client, tmp_path, size):
    """MS-SSIM needs 11 px on each side: under that the table says n/a, and everything else shows."""
    path = tmp_path / "thin.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path)
    comparison, gallery, table, bitstream, png, summary = client.predict(handle_file(str(path)), 0.5, METHODS,
                                                                         api_name="/compress")
    with Image.open(png) as im:
        assert im.size == size
    rows = table["data"]
    assert [row[0] for row in rows] == ["Ours (diffusion)", "JPEG", "WebP"]
    assert all(row[4] == "n/a" and np.isfinite(row[3]) for row in rows), rows
    assert len(gallery) == 2 and "bpp" in summary
    # A 1x1 image's smallest file (its container) is far above 0.5 bpp: the summary says so.
    assert ("not reachable for this image" in summary) == (rows[0][2] > 0.5), (rows[0], summary)
    assert ("its smallest file" in rows[0][-1]) == (rows[0][2] > 0.5), rows[0]


def test_trajectory_strip_is_bounded_for_a_4096x1_image(client, tmp_path):
    """A 4096x1 image once made a 2,621,466x190 strip: each tile now fits 640x160, at most 12 tiles."""
    from ui import views

    path = tmp_path / "line.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (1, 4096, 3), dtype=np.uint8)).save(path)
    bitstream = client.predict(handle_file(str(path)), 0.5, [], api_name="/compress")[3]
    strip = client.predict(handle_file(bitstream), api_name="/trajectory")
    with Image.open(strip) as im:
        most = views.MAX_FRAMES * (views.MAX_TILE_ASPECT * 160 + 8 + 6)
        print(f"4096x1 trajectory strip: {im.width}x{im.height}")
        assert im.width <= most and im.height <= 160 + 8 + views.LABEL_H


def test_api_lists_the_named_endpoints(client):
    names = set(client.view_api(print_info=False, return_format="dict")["named_endpoints"])
    assert {"/compress", "/decode", "/baselines", "/trajectory"} <= names


def test_compress_returns_every_output_losslessly(compressed, small_png):
    comparison, gallery, table, bitstream, png, summary = compressed
    original, ours = comparison
    # Every image the page shows is PNG (gradio would otherwise re-encode as lossy WebP).
    for path in (original, ours, png, *[item["image"] for item in gallery]):
        assert _is_png(path), path
    with Image.open(small_png) as src, Image.open(original) as shown:
        assert np.array_equal(np.asarray(src.convert("RGB")), np.asarray(shown.convert("RGB")))
    with Image.open(ours) as im:
        assert im.size == (256, 160)
    # The gallery holds exactly the requested baselines, captioned with their bpp.
    assert [item["caption"].split(" · ")[0] for item in gallery] == ["JPEG", "WebP"]
    assert all("bpp" in item["caption"] for item in gallery)
    # The table: ours first, then the baselines; bytes and bpp agree with the real file.
    rows = table["data"]
    assert [row[0] for row in rows][1:] == ["JPEG", "WebP"]
    size = Path(bitstream).stat().st_size
    assert rows[0][1] == size
    assert rows[0][2] == pytest.approx(8 * size / (256 * 160), abs=1e-4)
    assert rows[0][2] <= 0.3 + 1e-9  # rate control never overshoots the target
    assert all(np.isfinite(row[3]) and 0 < row[4] <= 1 for row in rows)  # PSNR, MS-SSIM
    # Every metric of codec.evaluate.metrics' registry that can run here has its column (SWD needs no weights).
    from codec.evaluate import metrics

    shown = [m.label for name, m in metrics.PER_IMAGE.items() if metrics.available(name)]
    assert table["headers"] == ["method", "bytes", "bpp", *shown, "encode ms", "decode ms", "note"]
    swd = table["headers"].index(metrics.PER_IMAGE["swd"].label)
    assert all(np.isfinite(row[swd]) and row[swd] >= 0 for row in rows)
    assert "bpp" in summary and "t =" in summary and "not reachable" not in summary


def test_trajectory_of_a_bitstream(client, compressed):
    strip = client.predict(handle_file(compressed[3]), api_name="/trajectory")
    assert _is_png(strip)
    with Image.open(strip) as im:
        # one tile per denoising step (here the tiny codec picks t = 0: the decoded image alone,
        # tests/ui/test_ui_trajectory.py counts tiles), each scaled to 160 px high (+ frame and label)
        assert im.height > 160 and im.width >= 160 * 256 / 160


def test_decode_reproduces_the_compressed_image(client, compressed):
    _, _, table, bitstream, png, _ = compressed
    image, header, summary, decoded_png = client.predict(handle_file(bitstream), api_name="/decode")
    with Image.open(png) as a, Image.open(image) as b:
        assert np.array_equal(np.asarray(a), np.asarray(b))  # decoding is deterministic
    assert (header["width"], header["height"]) == (256, 160)
    assert header["bpp"] == pytest.approx(table["data"][0][2], abs=1e-4)
    assert _is_png(decoded_png)
    assert "bpp" in summary


def test_baselines_endpoint(client, small_png):
    gallery, table = client.predict(handle_file(str(small_png)), 0.5, ["jpeg"], api_name="/baselines")
    assert len(gallery) == 1 and _is_png(gallery[0]["image"])
    assert table["data"][0][0] == "JPEG"
    assert table["data"][0][2] <= 0.5


def test_a_baseline_that_cannot_run_is_a_table_note(client, small_png):
    """The naive latent baseline needs a prior fitted for the backbone; without one the row says so
    and the other baselines still come back."""
    from codec.core.backbone import build_tiny_backbone
    from codec.evaluate.baselines import NaivePriorMissing, load_naive_prior

    try:
        load_naive_prior(build_tiny_backbone())
        fitted = True
    except NaivePriorMissing:
        fitted = False
    gallery, table = client.predict(handle_file(str(small_png)), 0.5, ["naive", "jpeg"], api_name="/baselines")
    naive, jpeg = table["data"]
    assert jpeg[0] == "JPEG" and jpeg[1] > 0
    if fitted:
        assert naive[1] > 0 and len(gallery) == 2
    else:
        assert "unavailable" in naive[-1] and naive[1] is None
        assert [item["caption"].split(" · ")[0] for item in gallery] == ["JPEG"]


def _error(client, *args, api_name: str) -> str:
    with pytest.raises(AppError) as info:
        client.predict(*args, api_name=api_name)
    return str(info.value)


def test_broken_image_is_refused(client, tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(PNG_MAGIC + b"\x00" * 200)
    message = _error(client, handle_file(str(broken)), 0.1, METHODS, api_name="/compress")
    assert "image" in message.lower()
    assert "Traceback" not in message


@pytest.mark.parametrize("name", ["notes.txt", "notes.png", "notes"])
def test_a_non_image_gets_the_command_lines_message(client, tmp_path, name):
    from codec.core.images import NOT_AN_IMAGE

    path = tmp_path / name
    path.write_text("hello, this is not an image\n" * 20)
    assert _error(client, handle_file(str(path)), 0.1, METHODS, api_name="/compress") == NOT_AN_IMAGE


def test_a_non_image_data_url_gets_the_same_message(server):
    """A hand-made request (a data: URL instead of an upload) gets the message, not gradio's
    "Could not preprocess input component ..." report."""
    from codec.core.images import NOT_AN_IMAGE

    data = [{"url": "data:text/plain;base64,aGVsbG8=", "meta": {"_type": "gradio.FileData"}}, 0.1, ["jpeg"]]
    assert _called(server, "compress", data) == NOT_AN_IMAGE


def test_a_server_path_is_not_an_upload(server, tmp_path):
    """The handlers get only files uploaded by the visitor, never a server path they name."""
    secret = tmp_path / "server-side.png"
    Image.new("RGB", (64, 64), (1, 2, 3)).save(secret)
    message = _called(server, "compress", [{"path": str(secret), "meta": {"_type": "gradio.FileData"}}, 0.3, ["jpeg"]])
    assert "not uploaded" in message, message


def _called(server: str, api: str, data: list) -> str:
    """The error message of a call through the REST API (/gradio_api/call/...)."""
    base = server.rstrip("/")
    event = httpx.post(f"{base}/gradio_api/call/{api}", json={"data": data}, timeout=30).raise_for_status().json()
    answer = httpx.get(f"{base}/gradio_api/call/{api}/{event['event_id']}", timeout=120).text
    assert "event: error" in answer, answer[:500]
    return json.loads(answer.split("data:", 1)[1].strip().splitlines()[0])["error"]


def test_huge_image_is_refused(client, tmp_path):
    huge = tmp_path / "huge.png"
    Image.new("RGB", (1001, 1000), "gray").save(huge)  # just over the 1,000,000 px limit of the test server
    message = _error(client, handle_file(str(huge)), 0.1, METHODS, api_name="/compress")
    assert "1001x1000 = 1,001,000 pixels; the limit is 1,000,000 pixels" in message, message


def test_a_decompression_bomb_quotes_the_apps_limit(client, tmp_path):
    bomb = tmp_path / "bomb.png"
    Image.new("1", (20_000, 10_000)).save(bomb)  # 200 MP: Pillow itself refuses to open it
    message = _error(client, handle_file(str(bomb)), 0.1, METHODS, api_name="/compress")
    assert "decompression bomb" in message and "the limit is 1,000,000 pixels" in message, message


def test_oversized_upload_is_refused(server, client, tmp_path):
    big = tmp_path / "big.bin"
    big.write_bytes(np.random.default_rng(0).bytes(int((MAX_UPLOAD_MB + 0.5) * 1e6)))
    # gradio_client checks the limit the server announces before uploading ...
    with pytest.raises(ValueError, match="maximum file size"):
        client.predict(handle_file(str(big)), api_name="/decode")
    # ... and the server refuses the upload itself, whatever the client does.
    with big.open("rb") as f:
        response = httpx.post(server + "/gradio_api/upload", files={"files": ("big.bin", f)}, timeout=60)
    assert response.status_code == 413, response.text
    assert "size" in response.text.lower()


def test_wrong_file_is_refused_by_decode(client, small_png):
    message = _error(client, handle_file(str(small_png)), api_name="/decode")
    assert "bitstream" in message.lower()


def test_truncated_bitstream_is_refused(client, compressed, tmp_path):
    data = Path(compressed[3]).read_bytes()
    cut = tmp_path / "cut.dfcx"
    cut.write_bytes(data[: len(data) // 2])
    message = _error(client, handle_file(str(cut)), api_name="/decode")
    assert "Traceback" not in message and len(message) > 20


def test_corrupt_bitstream_is_refused(client, compressed, tmp_path):
    data = bytearray(Path(compressed[3]).read_bytes())
    data[len(data) // 2] ^= 0xFF
    bad = tmp_path / "flipped.dfcx"
    bad.write_bytes(bytes(data))
    message = _error(client, handle_file(str(bad)), api_name="/decode")
    assert "Traceback" not in message and len(message) > 20


def test_other_backbone_bitstream_is_refused(client, small_png, tmp_path):
    """A file made by another backbone (a tiny model with other weights) names the mismatch."""
    from codec.core.backbone import build_tiny_backbone
    from codec.core.diffusion_codec import DiffusionCodec

    other = DiffusionCodec(build_tiny_backbone(seed=1), mode="analytic")
    path = tmp_path / "other.dfcx"
    path.write_bytes(other.encode(Image.open(small_png), target_bpp=0.3).data)
    message = _error(client, handle_file(str(path)), api_name="/decode")
    assert "different backbone" in message


def test_a_burst_of_requests_queues_then_refuses_and_the_server_stays_up(server, client, small_png):
    """Twice the queue's size of compressions at once: the model runs one at a time, the queue
    holds QUEUE_SIZE, the rest are told the queue is full; /health answers throughout."""
    jobs = [client.submit(handle_file(str(small_png)), 0.3, ["jpeg"], api_name="/compress")
            for _ in range(2 * QUEUE_SIZE + 1)]
    with urllib.request.urlopen(server + "/health", timeout=5) as r:
        assert r.status == 200
    done, refused = 0, []
    for job in jobs:
        try:
            job.result(timeout=300)
            done += 1
        except Exception as exc:  # gradio_client raises its own error types for a full queue
            refused.append(str(exc))
    assert done >= 1 and refused, (done, refused)
    assert all("queue" in message.lower() for message in refused), refused
    with urllib.request.urlopen(server + "/health", timeout=5) as r:
        assert json.load(r)["status"] == "ok"


@pytest.mark.slow
def test_python_app_py_starts_offline_with_the_shipped_settings(tmp_path):
    """`python app.py` with Space.yaml as shipped (backbone auto) and no network: it serves at once,
    then loads the demo backbone (the tiny random one, with its warning, if the demo is missing)."""
    import subprocess
    import sys
    import time

    from tests.ui.conftest import ROOT, _free_port

    port = _free_port()
    env = dict(os.environ, GRADIO_SERVER_PORT=str(port), RESULTS_DIR=str(tmp_path / "results"),
               GRADIO_TEMP_DIR=str(tmp_path / "gradio"), HF_HUB_OFFLINE="1")
    for var in ("APP_BACKBONE", "APP_MODE", "APP_ADAPTER", "APP_STUDY_FILE"):
        env.pop(var, None)
    with open(tmp_path / "server.log", "w") as log:
        proc = subprocess.Popen([sys.executable, "app.py"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline, health = time.time() + 180, {}
            while not health.get("codec_loaded") and "failed" not in str(health.get("backbone")):
                assert proc.poll() is None and time.time() < deadline, (tmp_path / "server.log").read_text()[-3000:]
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                        health = json.load(r)
                except OSError:
                    pass
                time.sleep(0.5)
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    demo_shipped = (ROOT / "assets" / "models" / "demo" / "vae" / "config.json").is_file()
    assert health["codec_loaded"], health
    assert ("demo" in health["backbone"]) if demo_shipped else ("RANDOM" in health["backbone"]), health
    assert health["study"] is True  # the demo study of Space.yaml
