"""build-stimuli with the real baselines: measured bpp from the real bytes, PNGs without
metadata, and a build that resumes where it was interrupted."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from study import config, stimuli

from .conftest import PHOTOS

ROOT = Path(__file__).resolve().parents[2]
YAML = """\
id: stim
images:
  - {{key: astro, path: images/astronaut.png, crop: {crop}}}
  - {{key: creek, path: images/creek.png, crop: [0, 0, 64, 64]}}
conditions:
  - {{method: jpeg, bpp: 0.8}}
  - {{method: webp, bpp: 0.5}}
trials_per_session: 5
catch_trials: {{count: 1, method: jpeg, bpp: 0.3}}
consent: {{version: "1", text: ok}}
"""


class Interrupted(Exception):
    pass


def test_build_measures_and_resumes(tmp_path):
    shutil.copytree(PHOTOS, tmp_path / "images")
    path = tmp_path / "stim.yaml"
    path.write_text(YAML.format(crop="[64, 64, 96, 64]"))
    cfg = config.load(path)
    real = stimuli._Coders(cfg)
    calls = []

    def interrupted_after_two(image, method, bpp):
        if len(calls) == 2:
            raise Interrupted()          # as if the process were stopped here
        calls.append(method)
        return real(image, method, bpp)

    with pytest.raises(Interrupted):
        stimuli.build(cfg, log=lambda m: None, coder=interrupted_after_two)
    done = stimuli.read_manifest(cfg.stimuli_dir)["astro"]["stimuli"]
    assert set(done) == {"reference", "jpeg@0.8", "webp@0.5"}

    logs = []
    manifest = stimuli.build(cfg, log=logs.append)
    assert sum(": " in m and "bpp" in m for m in logs) == 1 + 3     # astro's catch + creek's three
    for key, entry in manifest.items():
        assert set(entry["stimuli"]) == {"reference", "jpeg@0.8", "webp@0.5", "catch"}
        w, h = entry["width"], entry["height"]
        assert (w, h) == ((96, 64) if key == "astro" else (64, 64))
        for name, st in entry["stimuli"].items():
            png = Image.open(cfg.stimuli_dir / st["file"])
            assert png.size == (w, h) and png.format == "PNG" and not png.info.get("exif") and not png.text
            if name != "reference":
                bits = (cfg.stimuli_dir / st["bitstream"]).read_bytes()
                assert st["bpp"] == pytest.approx(8 * len(bits) / (w * h)) and len(bits) == st["bytes"]

    # A lost file is rebuilt alone; a changed crop rebuilds that image only.
    (cfg.stimuli_dir / manifest["creek"]["stimuli"]["webp@0.5"]["file"]).unlink()
    logs.clear()
    stimuli.build(cfg, log=logs.append)
    assert [m.split(":")[0] for m in logs[:-1]] == ["creek webp@0.5"]
    path.write_text(YAML.format(crop="[0, 0, 64, 64]"))
    logs.clear()
    stimuli.build(config.load(path), log=logs.append)
    assert {m.split(" ")[0] for m in logs[:-1]} == {"astro"} and len(logs) == 4

    out = subprocess.run([sys.executable, "-m", "study", "build-stimuli", str(path)], cwd=ROOT,
                         capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.startswith("0 stimuli built")

    # A condition replaced by another: the old one's files go, the others stay.
    webp = cfg.stimuli_dir / manifest["creek"]["stimuli"]["webp@0.5"]["file"]
    path.write_text(YAML.format(crop="[0, 0, 64, 64]").replace("bpp: 0.5}", "bpp: 0.6}"))
    manifest = stimuli.build(config.load(path), log=lambda m: None)
    assert not webp.exists() and all("webp@0.5" not in e["stimuli"] and "webp@0.6" in e["stimuli"]
                                      for e in manifest.values())
    assert (cfg.stimuli_dir / manifest["creek"]["stimuli"]["jpeg@0.8"]["file"]).exists()
    assert json.loads((cfg.stimuli_dir / "manifest.json").read_text())["study"] == "stim"


def test_a_changed_recipe_rebuilds_and_a_running_study_refuses_it(tmp_path):
    from study.service import Participant, StudyService

    shutil.copytree(PHOTOS, tmp_path / "images")
    path = tmp_path / "stim.yaml"
    path.write_text(YAML.format(crop="[0, 0, 64, 64]"))
    stimuli.build(config.load(path), log=lambda m: None)
    url = f"sqlite:///{tmp_path / 'r.db'}"
    StudyService.open(path, url)                    # registers the stimuli

    path.write_text(YAML.format(crop="[0, 0, 64, 64]").replace("bpp: 0.3}", "bpp: 0.2}"))  # catch copy
    logs = []
    stimuli.build(config.load(path), log=logs.append)
    assert sorted(m.split(":")[0] for m in logs[:-1]) == ["astro catch", "creek catch"]
    svc = StudyService.open(path, url)              # nobody saw the old catch copies: replaced
    st = svc.start_session(Participant("anonymous", "p"))
    svc.consent(st.token, True, "1")                # trials now show the stimuli

    path.write_text(YAML.format(crop="[0, 0, 64, 64]").replace("method: jpeg, bpp: 0.3}", "method: webp, bpp: 0.3}"))
    stimuli.build(config.load(path), log=lambda m: None)    # other pixels
    with pytest.raises(RuntimeError, match="rebuilt after raters saw it"):
        StudyService.open(path, url)


def test_a_retrained_backbone_under_the_same_name_rebuilds_the_diffusion_stimuli(tmp_path):
    """The recipe holds the models' fingerprints: new weights in the study's backbone folder make
    new diffusion stimuli, and leave the baselines' alone."""
    from codec.core.random_backbones import save_random_backbone

    shutil.copytree(PHOTOS, tmp_path / "images")
    backbone = save_random_backbone("tiny", tmp_path / "backbone", seed=0)
    path = tmp_path / "stim.yaml"
    path.write_text(YAML.format(crop="[0, 0, 128, 128]").replace(
        "conditions:\n", f"conditions:\n  - {{method: diffusion, bpp: 0.9}}\n").replace(
        "consent:", f"codec: {{backbone: '{backbone}', mode: analytic}}\nconsent:"))
    first = stimuli.build(config.load(path), log=lambda m: None)["astro"]["stimuli"]
    assert first["diffusion@0.9"]["codec"]["backbone_fingerprint"] and first["diffusion@0.9"]["bpp"] <= 0.9

    logs = []
    stimuli.build(config.load(path), log=logs.append)
    assert logs[-1].startswith("0 stimuli built")      # the same models: nothing to do

    save_random_backbone("tiny", backbone, seed=1)     # retrained, same folder
    logs = []
    again = stimuli.build(config.load(path), log=logs.append)["astro"]["stimuli"]
    assert logs[-1].startswith("2 stimuli built")      # astro's and creek's diffusion stimulus
    assert again["diffusion@0.9"]["codec"]["backbone_fingerprint"] != first["diffusion@0.9"]["codec"]["backbone_fingerprint"]
    assert again["jpeg@0.8"] == first["jpeg@0.8"]


def test_the_codec_mode_defaults_to_learned_with_an_adapter_and_analytic_without(tmp_path):
    """`mode` left out is "auto", as in the app: the manifest records the mode the files were coded in."""
    from codec.core.random_backbones import save_random_backbone

    shutil.copytree(PHOTOS, tmp_path / "images")
    backbone = save_random_backbone("tiny", tmp_path / "backbone", seed=0)
    adapter = ROOT / "tests" / "codec" / "data" / "tiny-learned"
    for codec, mode in ((f"{{backbone: '{backbone}'}}", "analytic"),
                        (f"{{backbone: '{backbone}', adapter: '{adapter}'}}", "learned")):
        path = tmp_path / f"{mode}.yaml"
        path.write_text(YAML.format(crop="[0, 0, 128, 128]").replace(
            "conditions:\n", "conditions:\n  - {method: diffusion, bpp: 0.9}\n").replace(
            "id: stim", f"id: {mode}").replace("consent:", f"codec: {codec}\nconsent:"))
        built = stimuli.build(config.load(path), log=lambda m: None)["astro"]["stimuli"]["diffusion@0.9"]
        assert built["codec"]["mode"] == mode, built


def test_references_are_read_as_the_codec_reads_images(tmp_path):
    """A 16-bit PNG, a transparent PNG and a phone JPEG on its side (EXIF orientation 6) become the
    references the codec itself would code (codec.core.images.load_image): Pillow's convert("RGB")
    made the first white, the second the colour its transparent pixels hold, the third sideways.
    The crop is in upright pixels, and validation checks it against the upright size."""
    from codec.core.images import load_image

    images = tmp_path / "images"
    images.mkdir()
    gradient = np.linspace(0, 65535, 96 * 64).reshape(64, 96).astype(np.uint16)
    Image.fromarray(gradient).save(images / "deep.png")  # mode I;16
    rgba = np.zeros((64, 96, 4), np.uint8)
    rgba[..., 0], rgba[:32, :, 3] = 200, 255  # red; the lower half transparent
    Image.fromarray(rgba, "RGBA").save(images / "alpha.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # stored 96 wide and 64 high, shown 64 wide and 96 high
    Image.open(PHOTOS / "astronaut.png").convert("RGB").resize((96, 64)).save(images / "phone.jpg", exif=exif.tobytes())
    path = tmp_path / "stim.yaml"
    text = YAML.replace("  - {{key: astro, path: images/astronaut.png, crop: {crop}}}\n"
                        "  - {{key: creek, path: images/creek.png, crop: [0, 0, 64, 64]}}\n",
                        "  - {key: deep, path: images/deep.png}\n  - {key: alpha, path: images/alpha.png}\n"
                        "  - {key: phone, path: images/phone.jpg, crop: [0, 16, 64, 80]}\n").replace("{{", "{").replace("}}", "}")
    path.write_text(text)
    cfg = config.load(path)
    for spec in cfg.images:
        reference = np.asarray(stimuli.source_image(spec))
        expected = np.asarray(load_image(spec.path))
        if spec.crop:
            x, y, w, h = spec.crop
            expected = expected[y:y + h, x:x + w]
        assert np.array_equal(reference, expected), spec.key
    deep, alpha, phone = (np.asarray(stimuli.source_image(s)).astype(float) for s in cfg.images)
    assert 120 < deep.mean() < 135  # a gradient, not white
    assert np.array_equal(alpha[40, 10], [255, 255, 255]) and np.array_equal(alpha[10, 10], [200, 0, 0])
    assert phone.shape == (80, 64, 3)
    path.write_text(text.replace("[0, 16, 64, 80]", "[0, 16, 96, 80]"))  # fits the stored 96x64, not the shown 64x96
    with pytest.raises(config.ConfigError, match=r"exceeds the image size 64x96"):
        config.load(path)
