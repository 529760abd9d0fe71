"""Evaluation datasets: which image files, named how, and how each is cropped before coding.

A dataset is a folder (`DIR`), a glob (`'DIR/**/*.png'`), or a folder plus a list of files inside it
(a text file with one relative path a line, as the COCO-30k protocol ships, or comma-separated
names). Every image is named by its path relative to the folder, so images in sub-folders with
the same file name stay apart. `prepare` resizes (short side) then centre-crops, the COCO-30k
protocol's preprocessing (docs/evaluation.md).
"""

from __future__ import annotations

import glob
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from PIL import Image

from codec.core.images import ImageError, load_image
from codec.data.photos import DataError

# Every format codec.core.images reads (its pillow-heif opener adds HEIC/HEIF and AVIF).
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".avif", ".heic", ".heif", ".tif", ".tiff", ".bmp", ".gif")


@dataclass(frozen=True)
class ImageFile:
    name: str  # the path relative to the dataset folder, with "/": the image's name in every output
    path: Path


def list_images(data: str | Path, images: str | None = None, max_images: int | None = None) -> list[ImageFile]:
    """The dataset's images in a fixed order (sorted by name, or the list's order).

    `data`: a folder (its images, not its sub-folders) or a glob pattern (`**` recurses; names are
    relative to the pattern's folder part). `images`: a .txt file listing paths inside `data`, one
    a line (blank lines and `#` comments skipped), or comma-separated names inside `data`.
    """
    data = str(data)
    if glob.has_magic(data):
        if images:
            raise DataError("give either a glob in --data or a list in --images, not both")
        root = _folder_part(data)
        paths = [Path(p) for p in glob.glob(data, recursive=True)]
        files = sorted((ImageFile(_relative(p, root), p) for p in paths
                        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES), key=lambda f: f.name)
    else:
        root = Path(data)
        if not root.is_dir():
            raise DataError(f"--data {data} is not a folder")
        if images:
            files = [ImageFile(name, root / name) for name in _listed(images)]
            missing = [f.name for f in files if not f.path.is_file()]
            if missing:
                shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
                raise DataError(f"not in {data}: {shown}")
        else:
            files = [ImageFile(p.name, p) for p in sorted(root.iterdir())
                     if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
    if max_images:
        files = files[:max_images]
    if not files:
        raise DataError(f"no images in {data}")
    return files


def _folder_part(pattern: str) -> Path:
    parts = []
    for part in Path(pattern).parts:
        if glob.has_magic(part):
            break
        parts.append(part)
    return Path(*parts) if parts else Path(".")


def _relative(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix()


def _listed(images: str) -> list[str]:
    if images.endswith(".txt"):
        try:
            lines = Path(images).read_text().splitlines()
        except OSError as err:
            raise DataError(f"--images {images}: {err.strerror or err}") from None
        names = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    else:
        names = [n.strip() for n in images.split(",") if n.strip()]
    for name in names:  # names stay inside the folder: no absolute paths, no way up
        p = PurePosixPath(name)
        if p.is_absolute() or ".." in p.parts:
            raise DataError(f"--images lists {name!r}: give paths inside --data, without '..'")
    if len(set(names)) != len(names):
        raise DataError("--images lists an image twice")
    return names


def parse_size(text: str) -> tuple[int, int]:
    """"256" -> (256, 256); "512x384" -> (512, 384) as width x height."""
    try:
        values = [int(v) for v in text.lower().split("x")]
    except ValueError:
        values = []
    if len(values) == 1:
        values *= 2
    if len(values) != 2 or min(values) < 1:
        raise DataError(f"expected a size like 256 or 512x384, got {text!r}")
    return values[0], values[1]


def prepare(image: Image.Image, resize: int | None = None, crop: tuple[int, int] | None = None) -> Image.Image:
    """RGB; the short side scaled to `resize` (Lanczos) when given, then the centre `crop` (w, h)."""
    image = image.convert("RGB")
    if resize:
        scale = resize / min(image.size)
        image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                             Image.LANCZOS)
    if crop:
        width, height = crop
        if width > image.width or height > image.height:
            raise DataError(f"cannot crop {width}x{height} from a {image.width}x{image.height} image "
                            "(resize it first: --resize)")
        left, top = (image.width - width) // 2, (image.height - height) // 2
        image = image.crop((left, top, left + width, top + height))
    return image


def cover_crop(image: Image.Image, width: int, height: int) -> Image.Image:
    """RGB, scaled (Lanczos) to the smallest size that covers width x height, then its centre crop:
    a photo of any shape as a test image of exactly that size (the benchmarks' 768x512)."""
    image = image.convert("RGB")
    scale = max(width / image.width, height / image.height)
    image = image.resize((max(width, round(image.width * scale)), max(height, round(image.height * scale))),
                         Image.LANCZOS)
    left, top = (image.width - width) // 2, (image.height - height) // 2
    return image.crop((left, top, left + width, top + height))


def load(file: ImageFile, resize: int | None = None, crop: tuple[int, int] | None = None) -> Image.Image:
    """The image as the codec reads any image (codec.core.images: every format it takes, EXIF
    orientation applied, the loader's pixel limit), then `prepare`d."""
    try:
        return prepare(load_image(file.path), resize, crop)
    except ImageError as err:
        raise DataError(f"{file.name}: {err}") from None
