"""AppContext: scratch files expire, uploads over the limit are refused, the GPU decorator is inert
without the `spaces` package."""

from __future__ import annotations

import importlib.util
import os
import time

import gradio as gr
import pytest

from ui.context import SCRATCH_TTL_S, AppContext, gpu
from ui.settings import Settings


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
