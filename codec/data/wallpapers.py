"""The demo backbone's training set, rebuilt by one command from Debian packages pinned here.

    python -m codec.train data --out DIR [--photos ../shared/data/photos] [--packages a,b] [--debs FOLDER]

Steps: download each .deb of DEBS from the Debian archive's pool (name, version and SHA-256 pinned,
so the set is the same wherever it is rebuilt; `--debs` takes the same files already downloaded),
`dpkg-deb -x` each into a scratch folder, keep the files that DEBS lists as photographs, resize them
(`fit`), copy in the photos of ../shared/data/photos with their SOURCES.json entries (the six
validation photos too: the trainer validates on them and codec.data.photos.split_photos keeps them
out of training), and write SOURCES.json: package, file, author and licence per file, read from the
package's /usr/share/doc/<pkg>/copyright.

The selection is an explicit list, not a heuristic: every raster image and SVG of these packages
was looked at (docs/demo-backbone-v2.md), and only colour photographs of real scenes are listed.
Dropped: vector art, 3D renders, patterns, digital composites (a rendered sea under a star
field), photographs of paintings, grayscale images, scientific imagery (telescope, microscope,
fundus), and the second view of a stereo pair. A listed file missing from a package is an error,
and so is a kept image that looks like one of the copied photos (the validation photos above all).

FORBIDDEN packages are refused by name, whether asked for or found in a .deb: some of their files
are kept for evaluation, independent of training.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import re
import shutil
import subprocess
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from codec.data.datasets import prepare
from codec.data.files import write_atomically, write_png
from codec.data.photos import MULTIPLE, VALIDATION_PHOTOS, DataError

POOL = "http://deb.debian.org/debian/pool/"  # plain HTTP is fine: every file's SHA-256 is pinned below
FORBIDDEN = ("lomiri-wallpapers-16.04", "mate-backgrounds", "plasma-workspace-wallpapers")


@dataclass(frozen=True)
class Photo:
    path: str  # inside the package
    author: str | None = None  # None: from the package's copyright file
    license: str | None = None


@dataclass(frozen=True)
class Deb:
    package: str
    version: str
    pool: str  # the file's path under POOL
    sha256: str
    photographs: tuple[Photo, ...] = ()


GNOME = "usr/share/backgrounds/gnome/"
SKIMAGE = "usr/lib/python3/dist-packages/skimage/data/"
DEBS = (
    # Debian 12. Dropped: adwaita, blobs, drool, dune, field, grid, licorice, oceans, pixels, symbolic,
    # truchet, vnc, wood (-d/-l): vector art, patterns, 3D renders.
    Deb("gnome-backgrounds", "43.1-1", "main/g/gnome-backgrounds/gnome-backgrounds_43.1-1_all.deb",
        "a670dea21572652127d6e55f9cdb3a226d0037854fdbfd037003c7d00ee0dc4e"),
    # Debian 11. Dropped: Acrylic (a photographed painting), Endless-shapes, Stripes, Symbolics-1/2,
    # VNC, adwaita-day/morning/night (renders, patterns). Its Debian copyright file is stale (it
    # credits the 2012 Road.jpg and omits five of these); the credits below are those of upstream's
    # AUTHORS file in the same package (/usr/share/doc/gnome-backgrounds/AUTHORS). Icetwigs.jpg is in
    # neither: it comes under the package's own licence, which the copyright file gives as GPL-2+.
    Deb("gnome-backgrounds", "3.38.0-1", "main/g/gnome-backgrounds/gnome-backgrounds_3.38.0-1_all.deb",
        "76d8a4c52e5f346d9cb08bc8a1f58ad443d2bae211721af8a7248457c7a520e8",
        (Photo(GNOME + "ColdWarm.jpg", "invisiblepower (Pexels, per the package's AUTHORS)", "CC0"),
         Photo(GNOME + "Dark_Ivy.jpg"),
         Photo(GNOME + "Icetwigs.jpg", "GNOME backgrounds contributors (not itemised in the package)",
               "GPL-2+ (the package's licence)"),
         Photo(GNOME + "LightWaves.jpg", "Skitterphoto (Pexels, per the package's AUTHORS)", "CC0"),
         Photo(GNOME + "Road.jpg", "Joshua Welch (Pexels, per the package's AUTHORS)", "CC0"),
         Photo(GNOME + "SeaSunset.jpg", "Sebastian Voortman (Pexels, per the package's AUTHORS)", "CC0"),
         Photo(GNOME + "Wood.jpg", "Jakub Steiner (per the package's AUTHORS)",
               "Creative Commons Attribution-ShareAlike 3.0"))),
    # Dropped: lomiri-default-background, warty-final-ubuntu (abstract gradients).
    Deb("lomiri-wallpapers", "20.04.0-2", "main/l/lomiri-wallpapers/lomiri-wallpapers_20.04.0-2_all.deb",
        "6b75961132a2035f9c4db79f725a7290092619c5c8f672071c84cb5b10898e07"),
    # Dropped: Fossa (abstract), Painting-Colors (painted stripes), Infinite-Sea (rendered sea, star field).
    Deb("lomiri-wallpapers-20.04", "20.04.0-2", "main/l/lomiri-wallpapers/lomiri-wallpapers-20.04_20.04.0-2_all.deb",
        "d44e89b8473aafe64a5b678f014862dc31335aaaf18665c544d985d854f1a709",
        (Photo("usr/share/backgrounds/Kleiber_by_Lukas_Baubkus.jpg"),)),
    # Dropped: all twelve (vector art, 3D renders).
    Deb("ukui-wallpapers", "20.04.3-1.1", "main/u/ukui-wallpapers/ukui-wallpapers_20.04.3-1.1_all.deb",
        "6d49be70152e6d603163458e177e501deb0be8f2916389ccbfcf59b0d7fc0262"),
    # scikit-image's sample data. astronaut, chelsea and coffee are in ../shared already (astronaut is a
    # validation photo). Dropped: motorcycle_right (stereo twin), color (synthetic), hubble_deep_field,
    # ihc, retina (scientific), the grayscale ones. The copyright file credits only "the scikit-image
    # team" (Files: *); the authors below are those skimage.data's docstrings give.
    Deb("python3-skimage", "0.19.3-8", "main/s/skimage/python3-skimage_0.19.3-8_all.deb",
        "728d88c3e3440f1f3712de0805dc834d29248ff07e1eec8c0f3da07606f752f9",
        (Photo(SKIMAGE + "rocket.jpg", "SpaceX (per skimage.data.rocket)", "public domain"),
         Photo(SKIMAGE + "motorcycle_left.png", "Nera Nesic, Porter Westling, Xi Wang, York Kitajima, Greg Krathwohl, "
               "Daniel Scharstein, Middlebury 2014 stereo benchmark (per skimage.data.stereo_motorcycle)"))),
)
PACKAGES = tuple(dict.fromkeys(deb.package for deb in DEBS))

SHORT_SIDE = 512  # the validation photos' scale (768x512 and the like), so crops see the same detail sizes
PACKAGE_NAME = re.compile(r"[a-z0-9][a-z0-9+.-]+")  # Debian policy 5.6.1
NOT_GIVEN = "not given in the package's copyright file"
MAX_DEB_BYTES = 256 << 20  # the largest pinned .deb is 41 MB; a download is cut off here, before the hash check
SAME_PICTURE = 6.0  # mean absolute difference (of 255) of 16x16 grey thumbnails below which two images are one


def check_packages(names) -> list[str]:
    """The package names, each a valid Debian name and none of FORBIDDEN."""
    names = list(names)
    for name in names:
        if not PACKAGE_NAME.fullmatch(name):
            raise DataError(f"{name!r} is not a Debian package name")
        if name in FORBIDDEN:
            raise DataError(f"{name} is not used for training: its files are kept for independent evaluation")
    return names


def fetch(deb: Deb, folder: Path | None, scratch: Path) -> Path:
    """The .deb file: from `folder` when given (named as in the pool), else downloaded from POOL;
    either way it must have the pinned SHA-256."""
    name = Path(deb.pool).name
    if folder:
        path = Path(folder) / name
        if not path.is_file():
            raise DataError(f"{name} is not in {folder}")
    else:
        path = scratch / name
        try:
            with urllib.request.urlopen(POOL + deb.pool, timeout=60) as response, open(path, "wb") as f:
                while chunk := response.read(1 << 20):
                    if f.tell() + len(chunk) > MAX_DEB_BYTES:
                        raise DataError(f"{POOL + deb.pool} is larger than {MAX_DEB_BYTES >> 20} MiB")
                    f.write(chunk)
        except OSError as err:
            raise DataError(f"cannot download {POOL + deb.pool}: {err}") from None
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != deb.sha256:
        raise DataError(f"{name} has SHA-256 {digest}, not the pinned {deb.sha256}")
    return path


def deb_package(path: Path) -> str:
    """The Package field of a .deb file's control data."""
    done = subprocess.run(["dpkg-deb", "--field", str(path), "Package"], capture_output=True, text=True)
    if done.returncode:
        raise DataError(f"{path.name} is not a Debian package: {done.stderr.strip()}")
    return done.stdout.strip()


def extract(path: Path, dest: Path) -> Path:
    """`dpkg-deb -x` into dest; the extracted tree's root."""
    dest.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["dpkg-deb", "-x", str(path), str(dest)], capture_output=True, text=True)
    if done.returncode:
        raise DataError(f"dpkg-deb -x {path.name} failed: {done.stderr.strip()}")
    return dest


def select_photographs(deb: Deb, root: Path) -> list[tuple[Photo, Path]]:
    """The listed photographs of an extracted package tree, all of which must exist."""
    found = [(photo, root / photo.path) for photo in deb.photographs]
    missing = [photo.path for photo, path in found if not path.is_file()]
    if missing:
        raise DataError(f"{deb.package} {deb.version} does not ship {', '.join(missing)}: look at the package again")
    return found


def copyright_of(copyright_file: Path, filename: str) -> dict:
    """{"author", "license"} of a file from a Debian copyright file.

    Machine-readable files (DEP-5): the last `Files:` paragraph with a pattern matching the file's
    name wins (upstream paths differ from installed ones, so patterns are matched by their last
    component; debian/* paragraphs never match). Years are dropped from the Copyright field.
    Free-form files with an "Image Authors:" list (gnome-backgrounds): the group that names the file.
    Anything else, or no match: the author and licence are reported as not given."""
    text = copyright_file.read_text(errors="replace") if copyright_file.is_file() else ""
    if text.startswith("Format:"):
        return _dep5_entry(text, filename)
    if "Image Authors:" in text:
        return _image_authors_entry(text.split("Image Authors:", 1)[1], filename)
    return {"author": NOT_GIVEN, "license": NOT_GIVEN}


def _dep5_entry(text: str, filename: str) -> dict:
    found = {"author": NOT_GIVEN, "license": NOT_GIVEN}
    for paragraph in re.split(r"\n\s*\n", text):
        fields = _fields(paragraph)
        patterns = fields.get("files", "").split()
        if any(not p.startswith("debian/") and fnmatch.fnmatchcase(filename, p.rsplit("/", 1)[-1]) for p in patterns):
            found = {"author": _without_years(fields.get("copyright", "")) or NOT_GIVEN,
                     "license": fields.get("license", "").split("\n")[0].strip() or NOT_GIVEN}
    return found


def _fields(paragraph: str) -> dict[str, str]:
    """A deb822 paragraph's fields (lower-case names); continuation lines joined with newlines."""
    fields, name = {}, None
    for line in paragraph.splitlines():
        if line[:1] in (" ", "\t") and name:
            fields[name] += "\n" + line.strip()
        elif ":" in line:
            name, value = line.split(":", 1)
            name = name.strip().lower()
            fields[name] = value.strip()
    return fields


def _image_authors_entry(text: str, filename: str) -> dict:
    """Groups of " - Name.jpg:" lines, each followed by "Copyright ©" and "Licensed under" lines."""
    names, authors, license, in_credit = [], [], None, False
    for line in text.split("\nLicenses:")[0].splitlines():
        item = re.match(r"\s*-\s+(\S+?):?\s*$", line)
        if item:
            if in_credit:  # a new group starts
                names, authors, license, in_credit = [], [], None, False
            names.append(item.group(1))
        elif line.strip().startswith("Copyright"):
            authors.append(_without_years(re.sub(r"^Copyright\s*", "", line.strip())))
            in_credit = True
        elif line.strip().startswith("Licensed under"):
            license = re.sub(r"^Licensed under\s+|\s+License\.?$|\.$", "", line.strip())
            if any(fnmatch.fnmatchcase(filename, n) for n in names):
                return {"author": "; ".join(authors) or NOT_GIVEN, "license": license}
    return {"author": NOT_GIVEN, "license": NOT_GIVEN}


def _without_years(copyright_field: str) -> str:
    """"2021, Lukas Baubkus" -> "Lukas Baubkus"; one holder a line, joined with "; "."""
    holders = []
    for line in copyright_field.splitlines():
        holder = re.sub(r"^[\s\d,.\-–]+|[\s\d,.\-–]+$", "", line.replace("©", "").replace("(c)", ""))
        if holder:
            holders.append(holder)
    return "; ".join(holders)


def fit(image: Image.Image, short_side: int = SHORT_SIDE) -> Image.Image:
    """RGB with EXIF orientation applied, the short side scaled down to `short_side` (Lanczos; smaller
    images are never upscaled), then the centre crop whose sides are multiples of 8 (the VAE's downscale)."""
    image = ImageOps.exif_transpose(image)
    image = prepare(image, resize=short_side if min(image.size) > short_side else None)
    return prepare(image, crop=(image.width // MULTIPLE * MULTIPLE, image.height // MULTIPLE * MULTIPLE))


def thumbnail(image: Image.Image) -> np.ndarray:
    """16x16 grey, whole frame: what `SAME_PICTURE` compares (survives resizing and re-encoding)."""
    return np.asarray(image.convert("L").resize((16, 16), Image.BOX), dtype=np.float32)


def output_name(package: str, original: str) -> str:
    """("gnome-backgrounds", "Dark_Ivy.jpg") -> "gnome-backgrounds-dark_ivy.png": the package's name
    keeps files apart from the copied photos (../shared has a wood.png too)."""
    return f"{package}-" + re.sub(r"[^a-z0-9]+", "_", Path(original).stem.lower()).strip("_") + ".png"


def add_deb(deb: Deb, root: Path, out: Path, sources: list[dict], seen: dict[str, np.ndarray]) -> None:
    """Write the package's photographs (extracted at root) into out and their entries into sources;
    `seen` holds the thumbnails of every image written so far, which none may repeat."""
    copyright_file = root / "usr/share/doc" / deb.package / "copyright"
    for photo, path in select_photographs(deb, root):
        name = output_name(deb.package, path.name)
        if name in seen or name in VALIDATION_PHOTOS:
            raise DataError(f"{deb.package}'s {path.name} would overwrite {name}")
        with Image.open(path) as im:
            image = fit(im)
        thumb = thumbnail(image)
        twins = [other for other, t in seen.items() if np.abs(t - thumb).mean() < SAME_PICTURE]
        if twins:
            raise DataError(f"{deb.package}'s {path.name} looks like {twins[0]}, already in the set")
        write_png(out / name, image)
        credit = copyright_of(copyright_file, path.name)
        sources.append({"file": name, "size": list(image.size), "split": "training",
                        "source": f"Debian package {deb.package} {deb.version}", "original": photo.path,
                        "author": photo.author or credit["author"], "license": photo.license or credit["license"]})
        seen[name] = thumb


def add_photos(photos: Path, out: Path, sources: list[dict], seen: dict[str, np.ndarray]) -> None:
    """Copy the photo folder's images and their SOURCES.json entries (each must have one)."""
    listed = {entry["file"]: entry for entry in _read_sources(photos)}
    for path in sorted(photos.iterdir()):
        if path.name == "SOURCES.json":
            continue
        if path.name not in listed:
            raise DataError(f"{path} has no entry in {photos / 'SOURCES.json'}")
        shutil.copyfile(path, out / path.name)
        with Image.open(path) as im:
            seen[path.name] = thumbnail(im)
        split = "validation" if path.name in VALIDATION_PHOTOS else "training"
        sources.append({**listed[path.name], "split": split})


def _read_sources(folder: Path) -> list[dict]:
    try:
        entries = json.loads((folder / "SOURCES.json").read_text())
    except (OSError, ValueError) as err:
        raise DataError(f"{folder / 'SOURCES.json'}: {err}") from None
    if not isinstance(entries, list) or not all(isinstance(e, dict) and isinstance(e.get("file"), str) for e in entries):
        raise DataError(f"{folder / 'SOURCES.json'}: expected a list of entries with a file name each")
    return entries


def build(out: Path, photos: Path, packages=PACKAGES, debs: Path | None = None, table: tuple[Deb, ...] = DEBS) -> list[dict]:
    """The training set in `out` (which must not exist yet) from the `table` entries of `packages`;
    .deb files from the folder `debs` or downloaded. Returns the SOURCES.json entries."""
    packages = check_packages(packages)
    check_packages(deb.package for deb in table)
    chosen = [deb for deb in table if deb.package in packages]
    unknown = sorted(set(packages) - {deb.package for deb in chosen})
    if unknown:
        raise DataError(f"no pinned .deb for {', '.join(unknown)} (codec.data.wallpapers.DEBS)")
    out, photos = Path(out), Path(photos)
    if out.exists():
        raise DataError(f"{out} exists: give a new folder")
    if not photos.is_dir():
        raise DataError(f"{photos} is not a folder")
    tmp_out = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp_out, ignore_errors=True)
    tmp_out.mkdir(parents=True)
    try:
        sources: list[dict] = []
        seen: dict[str, np.ndarray] = {}
        add_photos(photos, tmp_out, sources, seen)
        with tempfile.TemporaryDirectory(prefix="wallpapers-") as scratch:
            for deb in chosen:
                path = fetch(deb, debs, Path(scratch))
                if deb_package(path) != deb.package:
                    raise DataError(f"{path.name} holds the package {deb_package(path)}, not {deb.package}")
                add_deb(deb, extract(path, Path(scratch) / f"{deb.package}_{deb.version}"), tmp_out, sources, seen)
        write_atomically(tmp_out / "SOURCES.json", (json.dumps(sources, indent=1, ensure_ascii=False) + "\n").encode())
    except BaseException:
        shutil.rmtree(tmp_out, ignore_errors=True)
        raise
    tmp_out.rename(out)  # all or nothing: a folder that exists is complete
    return sources
