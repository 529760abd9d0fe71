"""The photo collections the codec is trained and validated on, and the one train/validation split.

Every trainer (demo backbone, adapter, naive prior) and every evaluation default uses this split, so a
validation photo is never trained on anywhere.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

# Held out for validation, never trained on (also listed in assets/models/demo/MODEL_CARD.md).
VALIDATION_PHOTOS = ("astronaut.png", "bee.png", "blinds.png", "creek.png", "kite.png", "wine.png")
TRAINING_SUFFIXES = (".png", ".jpg", ".jpeg")
MULTIPLE = 8  # photos are cropped to multiples of the VAE's downscale


class DataError(ValueError):
    """A data folder that cannot be used as asked; the message says what is missing."""


def load_photos(folder: Path) -> dict[str, np.ndarray]:
    """All PNG/JPEG photos of a folder as RGB uint8 arrays cropped to multiples of 8, each read as
    the codec reads an image (codec.core.images.to_rgb: EXIF orientation, alpha on white, 16-bit to
    8-bit; no size limit, a training folder is the trainer's own)."""
    from codec.core.images import to_rgb  # torch with it: not for the modules that only need the split

    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder} is not a folder")
    photos = {}
    for path in sorted(folder.iterdir()):
        if path.suffix.lower() not in TRAINING_SUFFIXES:
            continue
        with Image.open(path) as image:
            arr = np.asarray(to_rgb(image))
        h, w = arr.shape[0] // MULTIPLE * MULTIPLE, arr.shape[1] // MULTIPLE * MULTIPLE
        photos[path.name] = arr[:h, :w]
    return photos


def split_photos(photos: dict[str, np.ndarray]) -> tuple[list[np.ndarray], dict[str, np.ndarray]]:
    """(training photos, {name: validation photo}); every validation photo must be present."""
    missing = [name for name in VALIDATION_PHOTOS if name not in photos]
    if missing:
        raise DataError(f"validation photos missing from the data folder: {', '.join(missing)}")
    train = [arr for name, arr in photos.items() if name not in VALIDATION_PHOTOS]
    if not train:
        raise DataError("no training photos left after holding out the validation photos")
    return train, {name: photos[name] for name in VALIDATION_PHOTOS}
