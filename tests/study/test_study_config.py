"""Study files: the demo is valid; a broken file gets every problem reported with its line."""
import subprocess
import sys
from pathlib import Path

import pytest

from study import config

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "assets" / "studies" / "demo.yaml"

BROKEN = """\
id: "bad id!"
title: 3
images:
  - key: a
    path: nothere.png
  - key: a
    path: {photo}
    crop: [700, 0, 256, 256]
conditions:
  - method: jpeg
    bpp: -1
  - method: foo
    bpp: 0.2
  - {{method: webp, bpp: 0.1}}
trials_per_session: 5
catch_trials: 3
repeat_trials: 3
scheduler: random
colour: red
consent:
  text: hi
platform:
  kind: prolific
"""


def test_demo_study_is_valid():
    cfg = config.load(DEMO)
    assert cfg.id == "demo" and len(cfg.images) == 3 and len(cfg.conditions) >= 2
    assert cfg.regular_trials == cfg.trials_per_session - cfg.catch_trials - cfg.repeat_trials > 0
    assert all(im.credit for im in cfg.images)
    out = subprocess.run([sys.executable, "-m", "study", "validate", str(DEMO)], cwd=ROOT,
                         capture_output=True, text=True)
    assert out.returncode == 0 and "ok" in out.stdout


def test_every_problem_is_reported_with_its_line(tmp_path):
    photo = ROOT / "assets" / "studies" / "demo" / "images" / "creek.png"   # 384x256
    path = tmp_path / "broken.yaml"
    path.write_text(BROKEN.format(photo=photo))
    with pytest.raises(config.ConfigError) as err:
        config.load(path)
    got = {(line, msg.split(":")[0]) for line, msg in err.value.problems}
    expected = {(1, "id"), (2, "title"), (5, "images.0.path"), (6, "images.1"), (8, "images.1.crop"),
                (11, "conditions.0.bpp"), (12, "conditions.1.method"), (15, "trials_per_session"),
                (18, "scheduler"), (19, "colour"), (21, "consent.version"), (23, "platform.completion_code")}
    assert expected <= got, sorted(got)
    out = subprocess.run([sys.executable, "-m", "study", "validate", str(path)], cwd=ROOT,
                         capture_output=True, text=True)
    assert out.returncode == 1
    assert f"{path}:8: images.1.crop: crop [700, 0, 256, 256] exceeds the image size 384x256" in out.stderr
    assert f"{len(err.value.problems)} problem(s)" in out.stderr


def test_yaml_syntax_error_has_a_line(tmp_path):
    path = tmp_path / "syntax.yaml"
    path.write_text("id: x\nconditions: [a, b\nimages: []\n")
    with pytest.raises(config.ConfigError) as err:
        config.load(path)
    assert err.value.problems[0][0] == 3 and "not valid YAML" in err.value.problems[0][1]
