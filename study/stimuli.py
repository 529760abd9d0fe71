"""Build a study's stimuli: the reference crop of every image, its decoding under every condition
(the diffusion codec or a baseline at the target bpp) and the catch copy (a heavily degraded
baseline), as PNG files plus the bitstreams, with the measured bpp in manifest.json.

Resumable: the manifest is rewritten (atomically) after every file, and a stimulus whose file
is present with the recorded hash is not built again. Changing an image's source or crop
rebuilds that image, a changed recipe (method, target, codec settings and models) that stimulus; the
files of conditions and images the study no longer has are removed.
This is the only module of `study` that imports the codec.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Callable

from PIL import Image

from study.config import StudyConfig
from study.scheduler import CATCH, REFERENCE


MANIFEST = "manifest.json"


def read_manifest(stimuli_dir: Path) -> dict:
    """The stimuli built so far: {image key: {width, height, credit, signature, stimuli}}."""
    path = Path(stimuli_dir) / MANIFEST
    if not path.is_file():
        return {}
    return json.loads(path.read_text())["images"]


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _write_manifest(cfg: StudyConfig, images: dict) -> None:
    path = cfg.stimuli_dir / MANIFEST
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"study": cfg.id, "images": images}, indent=1, sort_keys=True))
    os.replace(tmp, path)   # readers see the old or the new manifest, never half of one


def source_image(spec) -> Image.Image:
    """The image as the codec reads it (codec.core.images.load_image: EXIF orientation applied,
    alpha on white, 16-bit to 8-bit), then the crop, in upright pixels. Pillow's convert("RGB")
    showed raters a 16-bit PNG as white, a transparent area in whatever colour its pixels hold,
    and a phone photo on its side."""
    from codec.core.images import load_image

    im = load_image(spec.path)
    if spec.crop:
        x, y, w, h = spec.crop
        im = im.crop((x, y, x + w, y + h))
    return im


class _Coders:
    """Encoders by method, the diffusion codec loaded only if a condition needs it."""

    def __init__(self, cfg: StudyConfig):
        self.cfg = cfg
        self._codec = None

    @property
    def codec(self):
        if self._codec is None:
            from codec.core.diffusion_codec import DiffusionCodec
            self._codec = DiffusionCodec.load(backbone=self.cfg.codec_backbone,
                                              adapter=self.cfg.codec_adapter, mode=self.cfg.codec_mode)
        return self._codec

    def fingerprints(self) -> dict:
        """The backbone, adapter and mode ("auto" resolved) the diffusion stimuli are coded with."""
        return {"mode": self.codec.mode, "backbone_fingerprint": self.codec.backbone.fingerprint.hex(),
                "adapter_fingerprint": self.codec.adapters[self.codec.mode].fingerprint.hex()}

    def __call__(self, image: Image.Image, method: str, bpp: float) -> tuple[Image.Image, bytes, float]:
        if method == "diffusion":
            res = self.codec.encode(image, target_bpp=bpp)
            return self.codec.decode(res.data).image.convert("RGB"), res.data, float(res.bpp)
        from codec.evaluate.baselines import encode_at_bpp
        r = encode_at_bpp(image, method, bpp)
        return r.image.convert("RGB"), r.data, float(r.bpp)


def build(cfg: StudyConfig, log: Callable[[str], None] = print, coder=None) -> dict:
    """Build what is missing; returns the manifest's images mapping."""
    cfg.stimuli_dir.mkdir(parents=True, exist_ok=True)
    manifest = read_manifest(cfg.stimuli_dir)
    coder = coder or _Coders(cfg)
    jobs = [(c.key, c.method, c.bpp) for c in cfg.conditions]
    if cfg.catch_trials:
        jobs.append((CATCH, cfg.catch_method, cfg.catch_bpp))
    # What made a stimulus: when it changes (say the catch bpp, or the codec's mode), rebuild. The
    # models' fingerprints are part of it: a retrained backbone or adapter under the same name
    # makes other pictures.
    codec = {"backbone": cfg.codec_backbone, "adapter": cfg.codec_adapter, "mode": cfg.codec_mode}
    if any(method == "diffusion" for _, method, _ in jobs):
        codec.update(coder.fingerprints())
    recipe = {key: {"method": method, "target_bpp": bpp, **({"codec": codec} if method == "diffusion" else {})}
              for key, method, bpp in jobs}
    built = 0
    for spec in cfg.images:
        signature = {"source": spec.path.name, "source_sha256": _sha256(spec.path),
                     "crop": list(spec.crop) if spec.crop else None}
        entry = manifest.get(spec.key)
        if entry is None or entry.get("signature") != signature:
            entry = manifest[spec.key] = {"signature": signature, "credit": spec.credit, "stimuli": {}}
        folder = cfg.stimuli_dir / spec.key
        folder.mkdir(exist_ok=True)
        ref = source_image(spec)
        entry["width"], entry["height"] = ref.size
        if not _present(cfg, entry, REFERENCE, {}):
            entry["stimuli"][REFERENCE] = _save(cfg, folder, REFERENCE, ref, None, None)
            _write_manifest(cfg, manifest)
        for key, method, bpp in jobs:
            if _present(cfg, entry, key, recipe[key]):
                continue
            started = time.perf_counter()
            decoded, data, measured = coder(ref, method, bpp)
            if decoded.size != ref.size:
                raise RuntimeError(f"{method} returned {decoded.size} for a {ref.size} image")
            entry["stimuli"][key] = _save(cfg, folder, key, decoded, data, measured, **recipe[key])
            _write_manifest(cfg, manifest)
            built += 1
            log(f"{spec.key} {key}: {measured:.4f} bpp (target {bpp:g}) in {time.perf_counter() - started:.1f} s")
        for key in set(entry["stimuli"]) - {REFERENCE} - {k for k, _, _ in jobs}:
            _remove(cfg, entry["stimuli"].pop(key))     # a condition the study no longer has
    for key in set(manifest) - {spec.key for spec in cfg.images}:
        for st in manifest.pop(key)["stimuli"].values():
            _remove(cfg, st)
    _write_manifest(cfg, manifest)
    log(f"{built} stimuli built, {sum(len(e['stimuli']) for e in manifest.values())} in {cfg.stimuli_dir}")
    return manifest


def _remove(cfg: StudyConfig, st: dict) -> None:
    for name in (st["file"], st.get("bitstream")):
        if name:
            (cfg.stimuli_dir / name).unlink(missing_ok=True)


def _present(cfg: StudyConfig, entry: dict, key: str, recipe: dict) -> bool:
    """Built with this recipe, and the file is still the one built."""
    st = entry["stimuli"].get(key)
    if not st or any(st.get(k) != v for k, v in recipe.items()):
        return False
    path = cfg.stimuli_dir / st["file"]
    return path.is_file() and _sha256(path) == st["sha256"]


def _save(cfg, folder: Path, key: str, image: Image.Image, data: bytes | None, bpp: float | None,
          **extra) -> dict:
    """Write the PNG (no metadata: nothing in the file tells which method made it) and the bits."""
    safe = key.replace("@", "_")
    png = folder / f"{safe}.png"
    image.save(png, format="PNG", optimize=True)
    out = {"file": str(png.relative_to(cfg.stimuli_dir)), "sha256": _sha256(png), "bpp": bpp, **extra}
    if data is not None:
        bits = folder / f"{safe}.bin"
        bits.write_bytes(data)
        out["bitstream"] = str(bits.relative_to(cfg.stimuli_dir))
        out["bytes"] = len(data)
    return out
