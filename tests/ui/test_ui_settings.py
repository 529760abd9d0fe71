"""Settings from Space.yaml + environment, and the display helpers (no server needed)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from PIL import Image

from ui import views
from ui.settings import ENV_VARS, ROOT, Settings, SettingsError, load_settings


def test_space_yaml_sets_every_field_and_defaults_agree():
    """Space.yaml names every setting, and the values it ships equal the dataclass defaults."""
    import yaml

    shipped = yaml.safe_load((ROOT / "Space.yaml").read_text())
    fields = {f.name for f in dataclasses.fields(Settings)}
    assert set(shipped) == fields == set(ENV_VARS)
    assert load_settings(env={}) == Settings()


def test_readme_documents_every_setting_and_variable():
    readme = (ROOT / "README.md").read_text()
    for name, var in ENV_VARS.items():
        assert f"`{name}`" in readme and f"`{var}`" in readme, name


def test_environment_overrides_the_file(tmp_path):
    path = tmp_path / "Space.yaml"
    path.write_text("backbone: demo\nconcurrency: 2\nmax_upload_mb: 5\n")
    s = load_settings(path, env={"APP_CONCURRENCY": "3", "APP_ADAPTER": "null", "GRADIO_SERVER_PORT": "0",
                                 "DATABASE_URL": "postgresql+psycopg://u@h/db"})
    assert (s.backbone, s.concurrency, s.max_upload_mb, s.adapter, s.server_port) == ("demo", 3, 5.0, None, 0)
    assert s.database_url == "postgresql+psycopg://u@h/db"
    assert load_settings(path, env={"APP_WORKER": "false"}).worker is False
    assert load_settings(path, env={"APP_WORKER": "1", "APP_WORKER_TIMEOUT_S": "2.5"}).worker_timeout_s == 2.5
    assert load_settings(path, env={}).dtype == "auto"
    assert load_settings(path, env={"APP_DTYPE": "bfloat16"}).dtype == "bfloat16"


def test_the_dtype_setting_reaches_the_codec():
    import torch

    from ui.context import _load_args
    from ui.worker import load_codec

    args = _load_args(Settings(backbone="tiny", dtype="bfloat16"))
    assert args["dtype"] == "bfloat16"
    assert load_codec(**args).backbone.dtype == torch.bfloat16
    assert load_codec(**{**args, "dtype": "auto", "device": "cpu"}).backbone.dtype == torch.float32


@pytest.mark.parametrize("text, env, words", [
    ("concurrency: many\n", {}, "'many' is not an integer"),
    ("", {"APP_MAX_UPLOAD_MB": "abc"}, "'abc' is not a number"),
    ("", {"APP_MAX_PIXELS": "-5"}, "APP_MAX_PIXELS"),
    ("", {"APP_MODE": "magic"}, "auto, learned, analytic"),
    ("", {"APP_DTYPE": "float8"}, "auto, float32, float16, bfloat16"),
    ("", {"APP_WORKER": "maybe"}, "APP_WORKER"),
    ("", {"APP_WORKER_MEMORY_MB": "0"}, "must be positive"),
    ("colour: red\n", {}, "unknown setting"),
    ("- a list\n", {}, "mapping"),
])
def test_bad_settings_are_named(tmp_path, text, env, words):
    path = tmp_path / "Space.yaml"
    path.write_text(text)
    with pytest.raises(SettingsError, match=words):
        load_settings(path, env=env)


@pytest.mark.parametrize("variable, value, words", [
    ("APP_QUEUE_SIZE", "1e9", "queue_size"),
    ("APP_STUDY_FILE", "{tmp}/study.yaml", "images: is required"),
])
def test_a_bad_setting_or_study_file_stops_the_app_with_its_message(tmp_path, variable, value, words):
    """`python app.py` says what is wrong in the first line, on stderr, and exits 1: no traceback."""
    import os
    import subprocess
    import sys

    (tmp_path / "study.yaml").write_text("id: x\n")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "GRADIO_SERVER_PORT": "0", variable: value.format(tmp=tmp_path)}
    run = subprocess.run([sys.executable, "app.py"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 1 and "Traceback" not in run.stderr, run.stderr
    errors = [line for line in run.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and words in run.stderr, run.stderr


def test_relative_paths_resolve_against_the_repository():
    s = Settings(results_dir="runs/x")
    assert s.resolve(s.results_dir) == ROOT / "runs" / "x"
    assert s.resolve("/abs/path") == Path("/abs/path")


def test_crop_box_stays_inside_the_image():
    assert views.crop_box((100, 80), 0.5, 0.5, 40) == (30, 20, 70, 60)
    assert views.crop_box((100, 80), 1.0, 0.0, 40) == (60, 0, 100, 40)  # clamped at the corner
    assert views.crop_box((30, 20), 0.5, 0.5, 96) == (0, 0, 30, 20)  # larger than the image


def test_trajectory_strip_highlights_the_predicted_timestep():
    frames = [(t, Image.new("RGB", (64, 32), (v, v, v))) for t, v in ((40, 60), (20, 120), (1, 200))]
    strip = views.trajectory_strip(frames, tile_h=48)
    assert strip.height == 48 + 2 * 4 + views.LABEL_H
    assert strip.getpixel((1, 1)) == views.HIGHLIGHT  # the first (predicted t) tile has the orange frame
    # Scan the middle row: three grey tiles of 96 px (64x32 scaled to 48 px high), in order.
    row = [strip.getpixel((x, 4 + 24)) for x in range(strip.width)]
    runs = [v for v in (60, 120, 200) if row.count((v, v, v)) == 96]
    assert runs == [60, 120, 200]
    assert row.index((120, 120, 120)) > row.index((60, 60, 60))


@pytest.mark.parametrize("size", [(4096, 1), (1, 4096), (2000, 8), (1, 1), (1536, 1536)])
def test_trajectory_strip_is_bounded_for_any_aspect_ratio_and_step_count(size):
    """A 4096x1 frame once made a 2,621,466x190 strip (4 GB): now every tile fits a 160 x 640
    box (or its label) and at most MAX_FRAMES tiles are drawn, the first and the last among them."""
    frames = [(t, Image.new("RGB", size, (t, t, t))) for t in range(100, 0, -1)]  # 100 steps
    strip = views.trajectory_strip(frames)
    most_w = views.MAX_FRAMES * (views.MAX_TILE_ASPECT * 160 + 8) + 6 * (views.MAX_FRAMES - 1)
    assert strip.width <= most_w and strip.height == 160 + 8 + views.LABEL_H, strip.size
    assert views._spread(frames, views.MAX_FRAMES)[0][0] == 100 and views._spread(frames, views.MAX_FRAMES)[-1][0] == 1
    assert len(views._spread(frames, views.MAX_FRAMES)) == views.MAX_FRAMES
    print(f"{size[0]}x{size[1]} x 100 steps -> strip {strip.width}x{strip.height}")
