"""What every tab shares: the settings, the codec (loaded once, lazily), the study service, and a
scratch folder for the files the app hands out.

The codec is loaded on first use (or by `warm_up()` in a background thread at start-up), so the
server answers within a second even while a large backbone is still loading.
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
import uuid
from pathlib import Path

import gradio as gr

from ui.settings import Settings

log = logging.getLogger(__name__)

# Files handed out (bitstreams, PNGs) live this long; gradio copies what it serves into its own
# cache, which `Blocks(delete_cache=...)` cleans on the same schedule.
SCRATCH_TTL_S = 30 * 60


class AppContext:
    def __init__(self, settings: Settings, study=None):
        self.settings = settings
        self.study = study  # study.service.StudyService, or None when no study is configured
        self._codec = None
        self._codec_error: Exception | None = None
        self._lock = threading.Lock()
        results = settings.resolve(settings.results_dir)
        self.scratch_root = results / "tmp"
        self.scratch_root.mkdir(parents=True, exist_ok=True)

    @property
    def codec_loaded(self) -> bool:
        return self._codec is not None

    @property
    def backbone_notice(self) -> str | None:
        """Which backbone serves (a warning for the tiny random one), once loaded; else None."""
        if self._codec_error is not None:
            return f"failed to load: {self._codec_error}"
        return self._codec.backbone_notice if self._codec is not None else None

    def codec(self):
        """The DiffusionCodec, loaded on the first call; a failed load is re-raised every time."""
        with self._lock:
            if self._codec is None and self._codec_error is None:
                try:
                    self._codec = self._load_codec()
                except Exception as exc:  # remembered so every request gets the same clear message
                    log.exception("loading the codec failed")
                    self._codec_error = exc
            if self._codec_error is not None:
                raise self._codec_error
            return self._codec

    def _load_codec(self):
        from codec.codec import DiffusionCodec

        s = self.settings
        started = time.perf_counter()
        codec = DiffusionCodec.load(
            backbone=_local_or_id(s, s.backbone), adapter=_local_or_id(s, s.adapter),
            mode=None if s.mode == "auto" else s.mode, device=s.device, max_pixels=s.max_pixels,
            allow_tiny=True,  # never refuse to start; the notice on every result says the model is random
        )
        log.info("codec loaded in %.1f s: %s", time.perf_counter() - started, codec.backbone_notice)
        return codec

    def warm_up(self) -> threading.Thread:
        """Load the codec in a background thread so the first visitor does not wait for it."""
        thread = threading.Thread(target=self._warm_up, name="codec-warm-up", daemon=True)
        thread.start()
        return thread

    def _warm_up(self):
        try:
            self.codec()
        except Exception:
            pass  # already logged; the tabs show the message

    def check_upload(self, path: str | Path) -> None:
        """Refuse a file over the upload limit (gradio enforces it too, for browser uploads)."""
        limit = self.settings.max_upload_mb
        size = Path(path).stat().st_size
        if size > limit * 1e6:
            raise gr.Error(f"The file is {size / 1e6:.1f} MB; the limit is {limit:g} MB.")

    def scratch_dir(self) -> Path:
        """A fresh folder for one request's files; folders older than SCRATCH_TTL_S are removed."""
        self.sweep_scratch()
        path = self.scratch_root / uuid.uuid4().hex
        path.mkdir(parents=True)
        return path

    def sweep_scratch(self, max_age_s: float = SCRATCH_TTL_S) -> None:
        cutoff = time.time() - max_age_s
        for child in self.scratch_root.iterdir():
            try:
                if child.stat().st_mtime < cutoff:
                    shutil.rmtree(child, ignore_errors=True)
            except FileNotFoundError:
                pass  # removed by a concurrent sweep


def _local_or_id(settings: Settings, value: str | None) -> str | None:
    """A value naming an existing path relative to the repo root becomes that path; anything else
    (a hub id, "auto", "tiny", None) is passed through."""
    if value is None:
        return None
    path = settings.resolve(value)
    return str(path) if path.exists() else value


def gpu(fn):
    """`spaces.GPU` where the `spaces` package is installed (ZeroGPU), otherwise `fn` unchanged."""
    try:
        import spaces
    except ImportError:
        return fn
    return spaces.GPU(duration=120)(fn)

