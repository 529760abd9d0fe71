"""The demo backbone's training set, rebuilt by one command from Debian packages named here.

    python -m codec.train data --out DIR [--photos ../shared/data/photos] [--debs FOLDER]

Steps: `apt-get download` each package of PACKAGES (needs `apt-get update` once; `--debs` takes
.deb files already downloaded instead), `dpkg-deb -x` each into a scratch folder, keep the files
named in PHOTOGRAPHS, resize them (`fit`), copy in the photos of ../shared/data/photos with their
SOURCES.json entries (the six validation photos too: the trainer validates on them and
codec.data.photos.split_photos keeps them out of training), and write SOURCES.json: package,
file, author and licence per file, read from the package's /usr/share/doc/<pkg>/copyright.

The selection is an explicit list, not a heuristic: every raster image and SVG of the Debian 12
versions of PACKAGES was looked at (docs/demo-backbone-v2.md has the contact sheet's verdicts),
and only photographs of real scenes, straight from a camera, are listed. Dropped: vector art,
3D renders, patterns and digital composites (a rendered sea under a photographed star field is
not a photograph). A listed file missing from the package means the package changed: an error,
so the set never shrinks silently.

FORBIDDEN packages are refused by name, whether asked for or found in a given .deb: some of
their files are kept for evaluation, independent of training.
"""

from __future__ import annotations

import fnmatch
import json
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from PIL import Image, ImageOps

from codec.data.files import write_atomically, write_png
from codec.data.photos import MULTIPLE, VALIDATION_PHOTOS, DataError

PACKAGES = ("gnome-backgrounds", "lomiri-wallpapers", "lomiri-wallpapers-20.04", "ukui-wallpapers")
FORBIDDEN = ("lomiri-wallpapers-16.04", "mate-backgrounds", "plasma-workspace-wallpapers")

# package -> the photographs it ships (paths inside the package). Everything else is dropped:
#   gnome-backgrounds 43.1: adwaita, blobs, drool, dune, field, grid, licorice, oceans, pixels,
#     symbolic, truchet, vnc, wood (-d/-l): vector art, patterns and 3D renders.
#   lomiri-wallpapers 20.04.0: lomiri-default-background, warty-final-ubuntu: abstract gradients.
#   lomiri-wallpapers-20.04 20.04.0: Fossa (abstract), Painting-Colors (painted stripes),
#     Infinite-Sea (composite: rendered sea under a star field).
#   ukui-wallpapers 20.04.3: all twelve are vector art or 3D renders.
PHOTOGRAPHS = {
    "lomiri-wallpapers-20.04": ("usr/share/backgrounds/Kleiber_by_Lukas_Baubkus.jpg",),
}

SHORT_SIDE = 512  # the validation photos' scale (768x512 and the like), so crops see the same detail sizes
PACKAGE_NAME = re.compile(r"[a-z0-9][a-z0-9+.-]+")  # Debian policy 5.6.1; no leading "-" for apt-get
NOT_GIVEN = "not given in the package's copyright file"


def check_packages(names) -> list[str]:
    """The package names, each a valid Debian name and none of FORBIDDEN."""
    names = list(names)
    for name in names:
        if not PACKAGE_NAME.fullmatch(name):
            raise DataError(f"{name!r} is not a Debian package name")
        if name in FORBIDDEN:
            raise DataError(f"{name} is not used for training: its files are kept for independent evaluation")
    return names


def download(packages: list[str], dest: Path) -> list[Path]:
    """`apt-get download` of each package into dest; the .deb files."""
    dest.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["apt-get", "download", *packages], cwd=dest, capture_output=True, text=True)
    if done.returncode:
        raise DataError(f"apt-get download failed (run `apt-get update` once first?): {done.stderr.strip()}")
    return sorted(dest.glob("*.deb"))


def deb_package(deb: Path) -> str:
    """The Package field of a .deb file's control data."""
    done = subprocess.run(["dpkg-deb", "--field", str(deb), "Package"], capture_output=True, text=True)
    if done.returncode:
        raise DataError(f"{deb.name} is not a Debian package: {done.stderr.strip()}")
    return done.stdout.strip()


def extract(deb: Path, dest: Path) -> Path:
    """`dpkg-deb -x` into dest; the extracted tree's root."""
    dest.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["dpkg-deb", "-x", str(deb), str(dest)], capture_output=True, text=True)
    if done.returncode:
        raise DataError(f"dpkg-deb -x {deb.name} failed: {done.stderr.strip()}")
    return dest


def select_photographs(package: str, root: Path) -> list[Path]:
    """The listed photographs of an extracted package tree (PHOTOGRAPHS), all of which must exist."""
    files = [root / rel for rel in PHOTOGRAPHS.get(package, ())]
    missing = [f.relative_to(root).as_posix() for f in files if not f.is_file()]
    if missing:
        raise DataError(f"{package} no longer ships {', '.join(missing)}: look at the package again")
    return files


def copyright_of(copyright_file: Path, filename: str) -> dict:
    """{"author", "license"} of a file from a Debian copyright file.

    Machine-readable files (DEP-5): the last `Files:` paragraph with a pattern matching the file's
    name wins (upstream paths differ from installed ones, so patterns are matched by their last
    component; debian/* paragraphs never match). Years are dropped from the Copyright field.
    Anything else, or no match: the author and licence are reported as not given."""
    text = copyright_file.read_text(errors="replace") if copyright_file.is_file() else ""
    found = {"author": NOT_GIVEN, "license": NOT_GIVEN}
    if not text.startswith("Format:"):
        return found
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


def _without_years(copyright_field: str) -> str:
    """"2021, Lukas Baubkus" -> "Lukas Baubkus"; one holder a line, joined with "; "."""
    holders = []
    for line in copyright_field.splitlines():
        holder = re.sub(r"^[\s\d,.\-–]+|[\s\d,.\-–]+$", "", line.replace("©", "").replace("(c)", ""))
        if holder:
            holders.append(holder)
    return "; ".join(holders)


def fit(image: Image.Image, short_side: int = SHORT_SIDE) -> Image.Image:
    """RGB with EXIF orientation applied, the short side scaled to `short_side` (Lanczos), then the
    centre crop whose sides are multiples of 8 (the VAE's downscale)."""
    image = ImageOps.exif_transpose(image).convert("RGB")
    scale = short_side / min(image.size)
    image = image.resize((max(short_side, round(image.width * scale)), max(short_side, round(image.height * scale))),
                         Image.LANCZOS)
    width, height = image.width // MULTIPLE * MULTIPLE, image.height // MULTIPLE * MULTIPLE
    left, top = (image.width - width) // 2, (image.height - height) // 2
    return image.crop((left, top, left + width, top + height))


def output_name(original: str) -> str:
    """"Kleiber_by_Lukas_Baubkus.jpg" -> "kleiber_by_lukas_baubkus.png"."""
    return re.sub(r"[^a-z0-9]+", "_", Path(original).stem.lower()).strip("_") + ".png"


def add_package(package: str, root: Path, out: Path, sources: list[dict]) -> None:
    """Write the package's photographs (extracted at root) into out and their entries into sources."""
    copyright_file = root / "usr/share/doc" / package / "copyright"
    taken = {entry["file"] for entry in sources}
    for path in select_photographs(package, root):
        name = output_name(path.name)
        if name in taken or name in VALIDATION_PHOTOS:
            raise DataError(f"{package}'s {path.name} would overwrite {name}")
        with Image.open(path) as im:
            image = fit(im)
        write_png(out / name, image)
        sources.append({"file": name, "size": list(image.size), "split": "training",
                        "source": f"Debian package {package}", "original": path.relative_to(root).as_posix(),
                        **copyright_of(copyright_file, path.name)})
        taken.add(name)


def add_photos(photos: Path, out: Path, sources: list[dict]) -> None:
    """Copy the photo folder's images and their SOURCES.json entries (each must have one)."""
    listed = {entry["file"]: entry for entry in _read_sources(photos)}
    for path in sorted(photos.iterdir()):
        if path.name == "SOURCES.json":
            continue
        if path.name not in listed:
            raise DataError(f"{path} has no entry in {photos / 'SOURCES.json'}")
        shutil.copyfile(path, out / path.name)
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


def build(out: Path, photos: Path, packages=PACKAGES, debs: Path | None = None) -> list[dict]:
    """The training set in `out` (which must not exist yet); returns the SOURCES.json entries."""
    packages = check_packages(packages)
    out, photos = Path(out), Path(photos)
    if out.exists():
        raise DataError(f"{out} exists: give a new folder")
    if not photos.is_dir():
        raise DataError(f"{photos} is not a folder")
    with tempfile.TemporaryDirectory(prefix="wallpapers-") as scratch:
        scratch = Path(scratch)
        deb_files = sorted(Path(debs).glob("*.deb")) if debs else download(packages, scratch / "debs")
        by_package = {deb_package(deb): deb for deb in deb_files}
        check_packages(by_package)
        missing = [p for p in packages if p not in by_package]
        if missing:
            raise DataError(f"no .deb for {', '.join(missing)}")
        tmp_out = out.with_name(out.name + ".tmp")
        shutil.rmtree(tmp_out, ignore_errors=True)
        tmp_out.mkdir(parents=True)
        sources: list[dict] = []
        add_photos(photos, tmp_out, sources)
        for package in packages:
            add_package(package, extract(by_package[package], scratch / package), tmp_out, sources)
    write_atomically(tmp_out / "SOURCES.json", (json.dumps(sources, indent=1, ensure_ascii=False) + "\n").encode())
    tmp_out.rename(out)  # all or nothing: a folder that exists is complete
    return sources
