"""python -m codec: real files, real subprocesses, one-line errors, no tracebacks, no warning lines;
folders in and out (codec/batch.py); compressai's entropy models without compressai's datasets."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from tests.photos import photo as photo_named

REPO = Path(__file__).resolve().parents[2]


def _cli(*args, cwd=REPO):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "codec", *map(str, args)], capture_output=True, text=True, cwd=cwd, env=env)


def _python(code: str):
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})


def _assert_one_line_error(run, fragment):
    assert run.returncode != 0
    assert "Traceback" not in run.stderr
    errors = [line for line in run.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and fragment in errors[0], run.stderr


def _assert_only_the_notice(run):
    """stderr of a model command: the one line saying which backbone and adapter code, nothing else
    (no Python warnings, no library chatter)."""
    assert run.returncode == 0, run.stderr
    lines = run.stderr.splitlines()
    assert len(lines) == 1 and "backbone" in lines[0].lower(), run.stderr


def _summary(folder: Path) -> list[dict]:
    with (folder / "summary.csv").open(newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_encode_info_decode_round_trip(photo, tmp_path):
    """bfloat16 encode, float32 decode: a file decodes in another dtype than it was encoded in."""
    src, bits, out = tmp_path / "in.png", tmp_path / "out.dfc", tmp_path / "out.png"
    photo.save(src)
    run = _cli("encode", src, bits, "--backbone", "tiny", "--bpp", "0.5", "--dtype", "bfloat16")
    _assert_only_the_notice(run)
    info_run = _cli("info", bits)
    assert info_run.returncode == 0 and info_run.stderr == "", info_run.stderr
    info = json.loads(info_run.stdout)
    assert info["width"] == photo.width and info["height"] == photo.height and info["mode"] == "analytic"
    assert info["bpp"] <= 0.5 and info["bytes"] == bits.stat().st_size
    run = _cli("decode", bits, out, "--backbone", "tiny", "--dtype", "float32")
    _assert_only_the_notice(run)
    assert Image.open(out).size == photo.size


def test_an_unreachable_target_is_said(tmp_path):
    """A 16x16 image's smallest file is its container, far above 0.1 bpp: the file is written and
    a note on stderr says the target is not reachable; a folder run counts such files."""
    folder = tmp_path / "in"
    folder.mkdir()
    Image.new("RGB", (16, 16), (40, 120, 200)).save(folder / "tiny.png")
    run = _cli("encode", folder / "tiny.png", tmp_path / "tiny.dfcx", "--backbone", "tiny", "--bpp", "0.1")
    assert run.returncode == 0, run.stderr
    size = (tmp_path / "tiny.dfcx").stat().st_size
    assert 8 * size / 256 > 0.1
    notes = [line for line in run.stderr.splitlines() if line.startswith("note:")]
    assert notes == ["note: the target 0.1 bpp is not reachable for this image: this is its smallest file"], run.stderr
    run = _cli("encode", folder, tmp_path / "out", "--backbone", "tiny", "--bpp", "0.1")
    assert run.returncode == 0, run.stderr
    assert "1 encoded, 0 already done, 0 failed; 1 above the target bpp" in run.stdout, run.stdout


def test_info_imports_neither_torch_nor_diffusers(tiny_codec, photo, tmp_path):
    bits = tmp_path / "photo.dfcx"
    bits.write_bytes(tiny_codec.encode(photo, target_bpp=0.5).data)
    run = _python(
        "import sys, json, contextlib, io\n"
        "from codec.__main__ import main\n"
        "with contextlib.redirect_stdout(io.StringIO()) as out:\n"
        f"    code = main(['info', {str(bits)!r}])\n"
        "heavy = [m for m in ('torch', 'diffusers', 'transformers', 'compressai') if m in sys.modules]\n"
        "print(json.dumps({'code': code, 'heavy': heavy, 'bytes': json.loads(out.getvalue())['bytes']}))"
    )
    assert run.returncode == 0 and run.stderr == "", run.stderr
    assert json.loads(run.stdout) == {"code": 0, "heavy": [], "bytes": bits.stat().st_size}


def test_entropy_coding_without_compressai_datasets():
    """codec.core.entropy_coding gives compressai's own classes without importing compressai's
    datasets or torch_geometric (nor its FutureWarning), and a later full `import compressai` works."""
    run = _python(
        "import sys, json, torch\n"
        "from codec.core.entropy_coding import CompressionModel, EntropyBottleneck, GaussianConditional, get_scale_table\n"
        "light = not any(m in sys.modules for m in ('torch_geometric', 'compressai.datasets', 'compressai.zoo'))\n"
        "eb = EntropyBottleneck(4)\n"
        "eb.update(force=True)\n"
        "y = torch.arange(-8.0, 8.0).reshape(1, 4, 2, 2)\n"
        "eb_ok = torch.equal(eb.decompress(eb.compress(y), y.shape[-2:]), y)\n"
        "gc = GaussianConditional(None)\n"
        "gc.update_scale_table(get_scale_table(), force=True)\n"
        "indexes = gc.build_indexes(torch.full_like(y, 4.0))\n"
        "gc_ok = torch.equal(gc.decompress(gc.compress(y, indexes), indexes), y)\n"
        "print('full import', file=sys.stderr, flush=True)\n"
        "import compressai, compressai.datasets\n"
        "from compressai.models import CompressionModel as Full, FactorizedPrior\n"
        "model = compressai.zoo.bmshj2018_factorized(quality=1)\n"
        "same = (Full is CompressionModel and compressai.entropy_models.EntropyBottleneck is EntropyBottleneck\n"
        "        and isinstance(model, FactorizedPrior) and isinstance(model.entropy_bottleneck, EntropyBottleneck))\n"
        "print(json.dumps([light, eb_ok, gc_ok, same, compressai.available_entropy_coders(),\n"
        "                  hasattr(compressai.datasets, 'ImageFolder')]))"
    )
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout.splitlines()[-1]) == [True, True, True, True, ["ans"], True]
    assert run.stderr.startswith("full import\n"), run.stderr  # nothing (no warning) before the full compressai


def test_errors_are_one_line(tmp_path):
    junk = tmp_path / "junk.dfc"
    junk.write_bytes(b"this is not a bitstream")
    _assert_one_line_error(_cli("info", junk), "wrong magic")
    _assert_one_line_error(_cli("info", tmp_path / "missing.dfc"), "No such file")
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    _assert_one_line_error(_cli("encode", broken, tmp_path / "x.dfc", "--backbone", "tiny"), "image")
    _assert_one_line_error(_cli("decode", junk, tmp_path / "x.png", "--backbone", "owner/not-cached"), "not in the local Hugging Face cache")
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("not an image")
    _assert_one_line_error(_cli("encode", empty, tmp_path / "out", "--backbone", "tiny"), "No .png")


@pytest.mark.slow
def test_outputs_that_would_destroy_the_input_or_mislabel_a_file_are_refused_and_folders_are_filled(tmp_path):
    """Before any model loads: `encode photo.png photo.png` replaced the photo by its bitstream,
    `decode x.dfcx x.dfcx` the bitstream by a PNG, and `decode x.dfcx out.jpg` wrote a PNG named .jpg."""
    photo = tmp_path / "photo.png"
    Image.new("RGB", (64, 48), (200, 100, 50)).save(photo)
    original = photo.read_bytes()
    _assert_one_line_error(_cli("encode", photo, photo, "--backbone", "tiny"), "is the input file")
    _assert_one_line_error(_cli("encode", photo, tmp_path / "." / "photo.png", "--backbone", "tiny"), "is the input file")
    _assert_one_line_error(_cli("encode", photo, tmp_path / "out.JPG", "--backbone", "tiny"), "name it out.dfcx")
    assert photo.read_bytes() == original and sorted(p.name for p in tmp_path.iterdir()) == ["photo.png"]
    bits = tmp_path / "photo.dfcx"
    assert _cli("encode", photo, bits, "--backbone", "tiny").returncode == 0
    data = bits.read_bytes()
    _assert_one_line_error(_cli("decode", bits, bits, "--backbone", "tiny"), "is the input file")
    _assert_one_line_error(_cli("decode", bits, tmp_path / "out.jpg", "--backbone", "tiny"), "name the output out.png")
    assert bits.read_bytes() == data and not (tmp_path / "out.jpg").exists()
    # An existing folder as the output of one file is where the file goes, as with `cp FILE DIR`
    folder = tmp_path / "into"
    folder.mkdir()
    run = _cli("encode", photo, folder, "--backbone", "tiny")
    assert run.returncode == 0 and (folder / "photo.dfcx").read_bytes()[:4] == data[:4], run.stderr
    assert _cli("decode", folder / "photo.dfcx", folder, "--backbone", "tiny").returncode == 0
    assert sorted(p.name for p in folder.iterdir()) == ["photo.dfcx", "photo.png"]
    # and a folder of inputs cannot go into a file
    _assert_one_line_error(_cli("encode", folder, bits, "--backbone", "tiny"), "is a file; a folder of inputs needs an output folder")


def test_folders_encode_decode_resume_and_bad_files(tmp_path):
    photos, bits, decoded = tmp_path / "photos", tmp_path / "bits", tmp_path / "decoded"
    photos.mkdir()
    sizes = {}
    for name, width in (("kite", 64), ("cups", 72), ("moss", 80)):
        im = photo_named(name, width)
        im.save(photos / f"{name}.png")
        sizes[name] = im.size
    (photos / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (photos / "CREDITS.md").write_text("not an image: not an input either")

    run = _cli("encode", photos, bits, "--backbone", "tiny", "--bpp", "0.5")
    assert run.returncode == 1 and "Traceback" not in run.stderr, run.stderr  # one file failed, the rest went on
    errors = [line for line in run.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith("error: broken.png: "), run.stderr
    assert "3 encoded, 0 already done, 1 failed" in run.stdout
    rows = {row["file"]: row for row in _summary(bits)}
    assert sorted(rows) == ["broken.png", "cups.png", "kite.png", "moss.png"]
    assert rows["broken.png"]["error"] and not rows["broken.png"]["bytes"]
    for name in sizes:
        row, bitstream = rows[f"{name}.png"], bits / f"{name}.dfcx"
        assert row["error"] == "" and int(row["bytes"]) == bitstream.stat().st_size
        assert float(row["bpp"]) <= 0.5 and float(row["ms"]) > 0
    info = json.loads(_cli("info", bits / "kite.dfcx").stdout)
    assert (int(rows["kite.png"]["t"]), int(rows["kite.png"]["steps"])) == (info["t"], info["steps"])
    first_rows = rows

    # A rerun after a kill: one output cut in half (as a non-atomic write would leave it), a
    # leftover temporary file, a summary line cut short; the broken input is gone.
    (photos / "broken.png").unlink()
    cut = bits / "cups.dfcx"
    cut.write_bytes(cut.read_bytes()[: cut.stat().st_size // 2])
    (bits / ".moss.dfcx.abc.tmp").write_bytes(b"half")
    with (bits / "summary.csv").open("a") as f:
        f.write("moss.png,12")
    run = _cli("encode", photos, bits, "--backbone", "tiny", "--bpp", "0.5")
    assert run.returncode == 0, run.stderr
    assert "1 encoded, 2 already done, 0 failed" in run.stdout  # cups.dfcx was not complete: coded again
    rows = {row["file"]: row for row in _summary(bits)}
    assert sorted(rows) == ["cups.png", "kite.png", "moss.png"]
    assert rows["kite.png"] == first_rows["kite.png"] and rows["moss.png"] == first_rows["moss.png"]  # times kept
    assert int(rows["cups.png"]["bytes"]) == (bits / "cups.dfcx").stat().st_size

    (bits / "corrupt.dfcx").write_bytes(b"\xdf\xc0" + bytes(40))
    run = _cli("decode", bits, decoded, "--backbone", "tiny")
    assert run.returncode == 1 and "Traceback" not in run.stderr, run.stderr
    assert [line for line in run.stderr.splitlines() if line.startswith("error:")][0].startswith("error: corrupt.dfcx: ")
    for name, size in sizes.items():
        assert Image.open(decoded / f"{name}.png").size == size
    assert not (decoded / "corrupt.png").exists()
    rows = {row["file"]: row for row in _summary(decoded)}
    assert sorted(rows) == ["corrupt.dfcx", "cups.dfcx", "kite.dfcx", "moss.dfcx"] and rows["corrupt.dfcx"]["error"]

    (bits / "corrupt.dfcx").unlink()
    run = _cli("decode", bits, decoded, "--backbone", "tiny")
    assert run.returncode == 0 and "0 decoded, 3 already done, 0 failed" in run.stdout, run.stdout + run.stderr
    assert sorted(row["file"] for row in _summary(decoded)) == ["cups.dfcx", "kite.dfcx", "moss.dfcx"]


def test_the_readmes_python_example_runs(tmp_path):
    """The README's "From Python" example, as written, on a photo: it encodes, decodes and prints the header."""
    readme = (REPO / "README.md").read_text()
    example = readme.split("From Python", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    photo_named("kite").save(tmp_path / "photo.png")
    run = subprocess.run([sys.executable, "-c", example], capture_output=True, text=True, cwd=tmp_path,
                         env={**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)})
    assert run.returncode == 0, run.stderr
    assert "'format_version': 3" in run.stdout and "analytic" in run.stdout, run.stdout
    with Image.open(tmp_path / "photo-decoded.png") as im:
        assert im.size == Image.open(tmp_path / "photo.png").size

