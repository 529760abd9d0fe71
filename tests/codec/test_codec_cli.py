"""python -m codec: real files, one-line errors, no tracebacks."""

import json
import os
import subprocess
import sys

import pytest

REPO = __import__("pathlib").Path(__file__).resolve().parents[2]


def _cli(*args, cwd=REPO):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "codec", *map(str, args)], capture_output=True, text=True, cwd=cwd, env=env)


def _assert_one_line_error(run, fragment):
    assert run.returncode != 0
    assert "Traceback" not in run.stderr
    errors = [line for line in run.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and fragment in errors[0], run.stderr


@pytest.mark.slow
def test_encode_info_decode_round_trip(photo, tmp_path):
    src, bits, out = tmp_path / "in.png", tmp_path / "out.dfc", tmp_path / "out.png"
    photo.save(src)
    run = _cli("encode", src, bits, "--backbone", "tiny", "--bpp", "0.5")
    assert run.returncode == 0, run.stderr
    assert "backbone" in run.stderr.lower()  # the one-line notice of the backbone in use
    info = json.loads(_cli("info", bits).stdout)
    assert info["width"] == photo.width and info["height"] == photo.height and info["mode"] == "analytic"
    assert info["bpp"] <= 0.5 and info["bytes"] == bits.stat().st_size
    run = _cli("decode", bits, out, "--backbone", "tiny")
    assert run.returncode == 0, run.stderr
    from PIL import Image

    assert Image.open(out).size == photo.size


def test_errors_are_one_line(tmp_path):
    junk = tmp_path / "junk.dfc"
    junk.write_bytes(b"this is not a bitstream")
    _assert_one_line_error(_cli("info", junk), "wrong magic")
    _assert_one_line_error(_cli("info", tmp_path / "missing.dfc"), "No such file")
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    _assert_one_line_error(_cli("encode", broken, tmp_path / "x.dfc", "--backbone", "tiny"), "image")
    _assert_one_line_error(_cli("decode", junk, tmp_path / "x.png", "--backbone", "owner/not-cached"), "not in the local Hugging Face cache")
