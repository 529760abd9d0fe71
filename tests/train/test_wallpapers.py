"""The demo backbone's training set: which files of a Debian package are kept, what SOURCES.json
says about them, and the packages and files that are refused. Real .deb files built here with
dpkg-deb and pinned by their SHA-256 like the real table; no network."""

import dataclasses
import hashlib
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


GNOME_COPYRIGHT = """This package was debianized by someone.

Image Authors:

 - Road.jpg:
 - Waves.jpg:
   Copyright \u00a9 2012 Garrett LeSage <glesage@gmail.com>
   Licensed under Creative Commons Attribution-ShareAlike 3.0 License.

 - Icescape.jpg
   Copyright \u00a9 2016 Helena Barto\u0161ov\u00e1
   Licensed under Creative Commons Attribution-ShareAlike 3.0 License.

Licenses:

   This package is free software; Copyright 2005 FSF.
"""


def build_deb(tmp_path, package: str, files: dict[str, bytes], photographs=()) -> wallpapers.Deb:
    """A real .deb of `package` in tmp_path/debs holding `files` (path inside the package -> bytes),
    and its pinned table entry."""
    tree = tmp_path / "trees" / package
    (tree / "DEBIAN").mkdir(parents=True)
    (tree / "DEBIAN" / "control").write_text(
        f"Package: {package}\nVersion: 1.0\nArchitecture: all\nMaintainer: Test <test@example.org>\nDescription: test\n")
    for rel, data in files.items():
        (tree / rel).parent.mkdir(parents=True, exist_ok=True)
        (tree / rel).write_bytes(data)
    deb = tmp_path / "debs" / f"{package}_1.0_all.deb"
    deb.parent.mkdir(exist_ok=True)
    subprocess.run(["dpkg-deb", "--root-owner-group", "--build", str(tree), str(deb)], check=True, capture_output=True)
    return wallpapers.Deb(package, "1.0", f"main/x/{package}/{deb.name}", hashlib.sha256(deb.read_bytes()).hexdigest(),
                          tuple(wallpapers.Photo(path) for path in photographs))


def jpeg(name: str, width: int) -> bytes:
    buffer = io.BytesIO()
    photo(name, width).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


@pytest.fixture
def lomiri(tmp_path):
    return build_deb(tmp_path, "lomiri-wallpapers-20.04", {
        f"usr/share/backgrounds/{KEPT}": jpeg("moss", 1200),  # 1200x800: a photograph, listed
        "usr/share/backgrounds/Fossa_by_Jasper_Roks.jpg": jpeg("storm", 640),  # not listed: dropped
        "usr/share/backgrounds/lines.svg": b"<svg xmlns='http://www.w3.org/2000/svg'/>",
        "usr/share/doc/lomiri-wallpapers-20.04/copyright": COPYRIGHT.encode(),
    }, [f"usr/share/backgrounds/{KEPT}"])


@pytest.fixture
def gnome(tmp_path):
    return build_deb(tmp_path, "gnome-backgrounds", {
        "usr/share/backgrounds/gnome/Road.jpg": jpeg("wood", 400),  # 400x300: smaller than 512, not upscaled
        "usr/share/doc/gnome-backgrounds/copyright": GNOME_COPYRIGHT.encode(),
    }, ["usr/share/backgrounds/gnome/Road.jpg"])


@pytest.fixture
def photo_folder(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    photo("kite", 96).save(folder / "kite.png")  # a validation photo
    photo("cups", 96).save(folder / "cups.png")
    entries = [{"file": "kite.png", "author": "A", "license": "CC0-1.0"}, {"file": "cups.png", "author": "B", "license": "GPL-2+"}]
    (folder / "SOURCES.json").write_text(json.dumps(entries))
    return folder


def test_keeps_the_listed_photographs_resized_and_credits_every_file(tmp_path, lomiri, gnome, photo_folder):
    out = tmp_path / "data"
    sources = wallpapers.build(out, photo_folder, ["lomiri-wallpapers-20.04", "gnome-backgrounds"], tmp_path / "debs",
                               (lomiri, gnome))
    assert sorted(p.name for p in out.iterdir()) == [
        "SOURCES.json", "cups.png", "gnome-backgrounds-road.png", "kite.png", "lomiri-wallpapers-20.04-kleiber_by_lukas_baubkus.png"]
    with Image.open(out / "lomiri-wallpapers-20.04-kleiber_by_lukas_baubkus.png") as im:
        assert im.mode == "RGB" and im.size == (768, 512)  # 1200x800 -> Lanczos to 768x512
    with Image.open(out / "gnome-backgrounds-road.png") as im:
        assert im.size == (400, 296)  # never upscaled; cropped to multiples of 8
    assert json.loads((out / "SOURCES.json").read_text()) == sources
    by_file = {entry["file"]: entry for entry in sources}
    assert by_file["lomiri-wallpapers-20.04-kleiber_by_lukas_baubkus.png"] == {
        "file": "lomiri-wallpapers-20.04-kleiber_by_lukas_baubkus.png", "size": [768, 512], "split": "training",
        "source": "Debian package lomiri-wallpapers-20.04 1.0", "original": f"usr/share/backgrounds/{KEPT}",
        "author": "Lukas Baubkus", "license": "CC-BY-SA-3.0"}
    assert by_file["gnome-backgrounds-road.png"]["author"] == "Garrett LeSage <glesage@gmail.com>"
    assert by_file["gnome-backgrounds-road.png"]["license"] == "Creative Commons Attribution-ShareAlike 3.0"
    assert by_file["kite.png"] == {"file": "kite.png", "author": "A", "license": "CC0-1.0", "split": "validation"}
    assert by_file["cups.png"]["split"] == "training"
    assert (out / "cups.png").read_bytes() == (photo_folder / "cups.png").read_bytes()

    with pytest.raises(DataError, match="exists"):
        wallpapers.build(out, photo_folder, ["gnome-backgrounds"], tmp_path / "debs", (gnome,))


def test_a_listed_photograph_missing_from_the_package_is_an_error(tmp_path, photo_folder):
    deb = build_deb(tmp_path, "lomiri-wallpapers-20.04",
                    {"usr/share/doc/lomiri-wallpapers-20.04/copyright": COPYRIGHT.encode()}, [f"usr/share/backgrounds/{KEPT}"])
    with pytest.raises(DataError, match=f"does not ship usr/share/backgrounds/{KEPT}"):
        wallpapers.build(tmp_path / "data", photo_folder, [deb.package], tmp_path / "debs", (deb,))
    assert not (tmp_path / "data").exists() and not (tmp_path / "data.tmp").exists()


def test_a_photograph_that_repeats_a_copied_photo_is_an_error(tmp_path, photo_folder):
    """The validation photos' guard: a package image that is one of them, resized and re-encoded."""
    deb = build_deb(tmp_path, "python3-skimage", {"usr/lib/sky.jpg": jpeg("kite", 700)}, ["usr/lib/sky.jpg"])
    with pytest.raises(DataError, match="looks like kite.png"):
        wallpapers.build(tmp_path / "data", photo_folder, [deb.package], tmp_path / "debs", (deb,))


def test_a_deb_that_is_not_the_pinned_file_is_refused(tmp_path, lomiri, photo_folder):
    changed = dataclasses.replace(lomiri, sha256="0" * 64)
    with pytest.raises(DataError, match="not the pinned"):
        wallpapers.build(tmp_path / "data", photo_folder, [lomiri.package], tmp_path / "debs", (changed,))
    renamed = dataclasses.replace(lomiri, package="gnome-backgrounds")
    with pytest.raises(DataError, match="holds the package lomiri-wallpapers-20.04, not gnome-backgrounds"):
        wallpapers.build(tmp_path / "data", photo_folder, ["gnome-backgrounds"], tmp_path / "debs", (renamed,))


@pytest.mark.parametrize("name", wallpapers.FORBIDDEN)
def test_forbidden_packages_are_refused_by_name_and_in_the_table(tmp_path, photo_folder, capsys, name):
    assert train_main(["data", "--out", str(tmp_path / "a"), "--photos", str(photo_folder), "--packages", name]) == 1
    assert "kept for independent evaluation" in capsys.readouterr().err

    deb = build_deb(tmp_path, name, {"usr/share/backgrounds/x.jpg": jpeg("kite", 64)}, ["usr/share/backgrounds/x.jpg"])
    with pytest.raises(DataError, match=f"{name} is not used for training"):
        wallpapers.build(tmp_path / "b", photo_folder, ["gnome-backgrounds"], tmp_path / "debs", (deb,))
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_the_pinned_table_asks_for_no_forbidden_package():
    assert not {deb.package for deb in wallpapers.DEBS} & set(wallpapers.FORBIDDEN)
    assert set(wallpapers.PACKAGES) >= {"gnome-backgrounds", "lomiri-wallpapers", "lomiri-wallpapers-20.04", "ukui-wallpapers"}


@pytest.mark.parametrize("name", ["-o=APT::Get::Foo", "Gnome", "a b", ""])
def test_names_that_are_not_debian_package_names_are_refused(name):
    with pytest.raises(DataError, match="not a Debian package name"):
        wallpapers.check_packages([name])


def test_credits_from_each_kind_of_copyright_file(tmp_path):
    gnome = tmp_path / "gnome"
    gnome.write_text(GNOME_COPYRIGHT)
    assert wallpapers.copyright_of(gnome, "Icescape.jpg") == {"author": "Helena Barto\u0161ov\u00e1",
                                                             "license": "Creative Commons Attribution-ShareAlike 3.0"}
    assert wallpapers.copyright_of(gnome, "SeaSunset.jpg") == {"author": wallpapers.NOT_GIVEN, "license": wallpapers.NOT_GIVEN}
    plain = tmp_path / "plain"
    plain.write_text("This package was debianized by someone. Copyright 2005 A. Person.\n")
    assert wallpapers.copyright_of(plain, "Road.jpg") == {"author": wallpapers.NOT_GIVEN, "license": wallpapers.NOT_GIVEN}
    dep5 = tmp_path / "dep5"
    dep5.write_text(COPYRIGHT)
    assert wallpapers.copyright_of(dep5, "other.png") == {"author": "Dalton Durst", "license": "Expat"}  # Files: *
