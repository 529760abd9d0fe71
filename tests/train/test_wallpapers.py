"""The demo backbone's training set: which files of a Debian package are kept, what SOURCES.json
says about them, and the packages that are refused. Real .deb files built here with dpkg-deb, no network."""

import io
import json
import shutil
import subprocess

import pytest
from PIL import Image

from codec.data import wallpapers
from codec.data.photos import DataError
from codec.train.__main__ import main as train_main
from tests.photos import photo

pytestmark = pytest.mark.skipif(not shutil.which("dpkg-deb"), reason="needs dpkg-deb")

KEPT = "Kleiber_by_Lukas_Baubkus.jpg"
COPYRIGHT = """Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: lomiri-wallpapers

Files: *
Copyright: 2018, Dalton Durst
License: Expat

Files: 20.04/Fossa_by_Jasper_Roks.jpg
Copyright: 2023, Jasper Roks
License: CC-BY-SA-3.0

Files: 20.04/Kleiber_by_Lukas_Baubkus.jpg
Copyright: 2021, Lukas Baubkus
License: CC-BY-SA-3.0

Files: debian/*
Copyright: 2022-2023, Mike Gabriel <mike.gabriel@das-netzwerkteam.de>
License: Expat

License: CC-BY-SA-3.0
 Creative Commons Attribution-ShareAlike 3.0 Unported
"""


def build_deb(tmp_path, package: str, files: dict[str, bytes]) -> None:
    """A real .deb of `package` in tmp_path/debs holding `files` (path inside the package -> bytes)."""
    tree = tmp_path / "trees" / package
    (tree / "DEBIAN").mkdir(parents=True)
    (tree / "DEBIAN" / "control").write_text(
        f"Package: {package}\nVersion: 1.0\nArchitecture: all\nMaintainer: Test <test@example.org>\nDescription: test\n")
    for rel, data in files.items():
        (tree / rel).parent.mkdir(parents=True, exist_ok=True)
        (tree / rel).write_bytes(data)
    (tmp_path / "debs").mkdir(exist_ok=True)
    subprocess.run(["dpkg-deb", "--root-owner-group", "--build", str(tree), str(tmp_path / "debs" / f"{package}.deb")],
                   check=True, capture_output=True)


def jpeg(name: str, width: int) -> bytes:
    buffer = io.BytesIO()
    photo(name, width).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


@pytest.fixture
def lomiri_deb(tmp_path):
    build_deb(tmp_path, "lomiri-wallpapers-20.04", {
        f"usr/share/backgrounds/{KEPT}": jpeg("moss", 640),  # 640x427: a photograph, listed
        "usr/share/backgrounds/Fossa_by_Jasper_Roks.jpg": jpeg("storm", 640),  # not listed: dropped
        "usr/share/backgrounds/lines.svg": b"<svg xmlns='http://www.w3.org/2000/svg'/>",
        "usr/share/doc/lomiri-wallpapers-20.04/copyright": COPYRIGHT.encode(),
    })
    return tmp_path / "debs"


@pytest.fixture
def photo_folder(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    photo("kite", 96).save(folder / "kite.png")  # a validation photo
    photo("cups", 96).save(folder / "cups.png")
    entries = [{"file": "kite.png", "author": "A", "license": "CC0-1.0"}, {"file": "cups.png", "author": "B", "license": "GPL-2+"}]
    (folder / "SOURCES.json").write_text(json.dumps(entries))
    return folder


def test_keeps_the_listed_photograph_resized_and_credits_every_file(tmp_path, lomiri_deb, photo_folder):
    out = tmp_path / "data"
    assert train_main(["data", "--out", str(out), "--photos", str(photo_folder),
                       "--packages", "lomiri-wallpapers-20.04", "--debs", str(lomiri_deb)]) == 0

    assert sorted(p.name for p in out.iterdir()) == ["SOURCES.json", "cups.png", "kite.png", "kleiber_by_lukas_baubkus.png"]
    with Image.open(out / "kleiber_by_lukas_baubkus.png") as im:
        assert im.mode == "RGB" and im.height == wallpapers.SHORT_SIDE and im.width % 8 == 0
        assert im.width == 760  # 640x427 -> Lanczos to 767x512 -> the centre 760x512
    sources = {entry["file"]: entry for entry in json.loads((out / "SOURCES.json").read_text())}
    assert sources["kleiber_by_lukas_baubkus.png"] == {
        "file": "kleiber_by_lukas_baubkus.png", "size": [760, 512], "split": "training",
        "source": "Debian package lomiri-wallpapers-20.04", "original": f"usr/share/backgrounds/{KEPT}",
        "author": "Lukas Baubkus", "license": "CC-BY-SA-3.0"}
    assert sources["kite.png"] == {"file": "kite.png", "author": "A", "license": "CC0-1.0", "split": "validation"}
    assert sources["cups.png"]["split"] == "training"
    assert (out / "cups.png").read_bytes() == (photo_folder / "cups.png").read_bytes()

    assert train_main(["data", "--out", str(out), "--photos", str(photo_folder), "--debs", str(lomiri_deb)]) == 1  # exists


def test_a_listed_photograph_missing_from_the_package_is_an_error(tmp_path, photo_folder):
    build_deb(tmp_path, "lomiri-wallpapers-20.04", {"usr/share/doc/lomiri-wallpapers-20.04/copyright": COPYRIGHT.encode()})
    with pytest.raises(DataError, match=f"no longer ships usr/share/backgrounds/{KEPT}"):
        wallpapers.build(tmp_path / "data", photo_folder, ["lomiri-wallpapers-20.04"], tmp_path / "debs")
    assert not (tmp_path / "data").exists()


@pytest.mark.parametrize("name", wallpapers.FORBIDDEN)
def test_forbidden_packages_are_refused_by_name_and_inside_a_deb_folder(tmp_path, photo_folder, capsys, name):
    assert train_main(["data", "--out", str(tmp_path / "a"), "--photos", str(photo_folder), "--packages", name]) == 1
    assert "kept for independent evaluation" in capsys.readouterr().err

    build_deb(tmp_path, name, {"usr/share/backgrounds/x.jpg": jpeg("kite", 64)})
    with pytest.raises(DataError, match=f"{name} is not used for training"):
        wallpapers.build(tmp_path / "b", photo_folder, ["lomiri-wallpapers-20.04"], tmp_path / "debs")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


@pytest.mark.parametrize("name", ["-o=APT::Get::Foo", "Gnome", "a b", ""])
def test_names_that_are_not_debian_package_names_are_refused(name):
    with pytest.raises(DataError, match="not a Debian package name"):
        wallpapers.check_packages([name])


def test_copyright_without_the_machine_readable_format_gives_no_author(tmp_path):
    plain = tmp_path / "copyright"
    plain.write_text("This package was debianized by someone.\n\nImage Authors:\n - Road.jpg: Garrett LeSage\n")
    assert wallpapers.copyright_of(plain, "Road.jpg") == {"author": wallpapers.NOT_GIVEN, "license": wallpapers.NOT_GIVEN}
    dep5 = tmp_path / "dep5"
    dep5.write_text(COPYRIGHT)
    assert wallpapers.copyright_of(dep5, "other.png") == {"author": "Dalton Durst", "license": "Expat"}  # Files: *
