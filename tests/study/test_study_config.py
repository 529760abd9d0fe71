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


PAID = """\
id: paid
images:
  - {{key: a, path: a.png}}
conditions:
  - {{method: jpeg, bpp: 0.5}}
  - {{method: webp, bpp: 0.5}}
consent:
  version: "3"
  text: I agree.
{extra}platform: {platform}
"""
DETAILS = ("purpose", "duration_minutes", "pay", "contact", "data_stored", "retention", "withdrawal")


@pytest.mark.parametrize("platform", ["{kind: prolific, completion_code: C, no_consent_code: N}",
                                      "{kind: mturk, completion_code: C}"])
def test_a_paid_study_needs_every_consent_field(tmp_path, platform):
    path = tmp_path / "paid.yaml"
    path.write_text(PAID.format(extra="", platform=platform))
    with pytest.raises(config.ConfigError) as err:
        config.load(path, check_files=False)
    got = {msg.split(":")[0]: line for line, msg in err.value.problems}
    assert {f"consent.{k}" for k in DETAILS} <= set(got), got
    assert all(got[f"consent.{k}"] == 8 for k in DETAILS)          # the first line of the consent block
    out = subprocess.run([sys.executable, "-m", "study", "validate", str(path)], cwd=ROOT,
                         capture_output=True, text=True)
    assert out.returncode == 1
    kind = "prolific" if "prolific" in platform else "mturk"
    for key in DETAILS:
        assert f"{path}:8: consent.{key}: is required for a {kind} study (" in out.stderr


def test_consent_fields_are_checked_and_kept_in_order(tmp_path):
    path = tmp_path / "paid.yaml"
    extra = "".join(f"  {k}: {'12' if k == 'duration_minutes' else k + ' text'}\n" for k in reversed(DETAILS))
    text = PAID.format(extra="", platform="{kind: prolific, completion_code: C, no_consent_code: N}")
    path.write_text(text.replace("  text: I agree.\n", "  text: I agree.\n" + extra))
    cfg = config.load(path, check_files=False)
    assert [k for k, _ in cfg.consent.details] == list(DETAILS)
    assert cfg.consent.detail("duration_minutes") == "12" and cfg.consent.detail("pay") == "pay text"
    assert cfg.consent_version == "3" and cfg.consent_text == "I agree."
    path.write_text(text.replace("  text: I agree.\n", "  text: I agree.\n" + extra.replace("12", "-1")
                                 .replace("pay text", "''")))
    with pytest.raises(config.ConfigError) as err:
        config.load(path, check_files=False)
    msgs = [m for _, m in err.value.problems]
    assert any(m.startswith("consent.duration_minutes: must be > 0") for m in msgs)
    assert any(m.startswith("consent.pay: must not be empty") for m in msgs)


def test_an_open_study_needs_no_consent_details_and_prolific_needs_every_exit_code(tmp_path):
    path = tmp_path / "open.yaml"
    path.write_text(PAID.format(extra="", platform="{kind: none}"))
    cfg = config.load(path, check_files=False)
    assert cfg.consent.details == () and not cfg.allow_tie and not cfg.results_public
    assert not cfg.platform.accepts("prolific") and cfg.platform.accepts("anonymous")
    assert "not set up for Prolific" in cfg.platform.refusal("prolific")
    assert any("platform kind is none" in w for w in cfg.warnings())

    path.write_text(PAID.format(extra="max_catch_failures: 2\n", platform="{kind: prolific, completion_code: C}"))
    with pytest.raises(config.ConfigError) as err:
        config.load(path, check_files=False)
    names = {m.split(":")[0] for _, m in err.value.problems}
    assert {"platform.no_consent_code", "platform.screenout_code"} <= names


def test_ties_results_and_anonymous_visitors_on_a_platform(tmp_path):
    path = tmp_path / "demo-like.yaml"
    extra = "allow_tie: true\nresults_public: true\n"
    path.write_text(PAID.format(extra=extra, platform="{kind: none}"))
    cfg = config.load(path, check_files=False)
    assert cfg.allow_tie and cfg.results_public
    assert any("anyone can see the Results" in w for w in cfg.warnings())
    path.write_text(PAID.format(extra="allow_tie: sometimes\n", platform="{kind: none, allow_anonymous: 1}"))
    with pytest.raises(config.ConfigError) as err:
        config.load(path, check_files=False)
    assert {m.split(":")[0] for _, m in err.value.problems} >= {"allow_tie", "platform.allow_anonymous"}

    demo = config.load(DEMO)
    assert demo.platform.kind == "prolific" and demo.platform.allow_anonymous and demo.allow_tie
    assert demo.results_public is False
    assert demo.platform.accepts("prolific") and demo.platform.accepts("anonymous")
    assert not demo.platform.accepts("mturk")
    assert all(demo.consent.detail(k) for k in DETAILS)
    assert (demo.platform.completion_code, demo.platform.screenout_code, demo.platform.no_consent_code) == \
        ("DEMODONE", "DEMOSCRN", "DEMONOCN")
