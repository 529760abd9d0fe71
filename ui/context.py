"""What every tab shares: the settings, the codec (loaded once, lazily), the study service, and a
scratch folder for the files the app hands out.

The codec is loaded on first use (or by `warm_up()` in a background thread at start-up), so the
server answers within a second even while a large backbone is still loading. It lives in a model
process of its own (codec/core/isolated.py, setting `worker`): a visitor's file that crashes the
decoder, or a decode over the time or memory limit, ends that process, not the server, the study
API or anyone's votes; the next request gets a fresh one. Every model call goes through `run`.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import math
import shutil
import threading
import time
import uuid
from pathlib import Path

import gradio as gr

from ui import worker
from ui.errors import without_paths
from ui.settings import Settings

log = logging.getLogger(__name__)

# Files handed out (bitstreams, PNGs) live this long; gradio copies what it serves into its own
# cache, which `Blocks(delete_cache=...)` cleans on the same schedule.
SCRATCH_TTL_S = 30 * 60


class AppContext:
    def __init__(self, settings: Settings, study=None):
        self.settings = settings
        self.study = study  # study.service.StudyService, or None when no study is configured
        self.worker = _model_process(settings)  # codec.core.isolated.Isolated, or None: the codec runs here
        self._codec = None  # the DiffusionCodec, when it runs in this process
        self._notice: str | None = None
        self._codec_error: Exception | None = None
        self._lock = threading.Lock()
        results = settings.resolve(settings.results_dir)
        self.scratch_root = results / "tmp"
        self.scratch_root.mkdir(parents=True, exist_ok=True)

    @property
    def codec_loaded(self) -> bool:
        return self.worker.ready if self.worker is not None else self._codec is not None

    @property
    def backbone_notice(self) -> str | None:
        """Which backbone serves (a warning for the tiny random one), once loaded; else None."""
        if self._codec_error is not None:
            return without_paths(f"failed to load: {self._codec_error}")
        return without_paths(self._notice) if self._notice is not None else None

    def run(self, fn, *args, progress=None):
        """`fn(codec, *args)` (a function of ui.worker), with `progress=progress` when given: in the
        model process when there is one, else here. A failed load is re-raised every time."""
        self._load()
        kwargs = {} if progress is None else {"progress": progress}
        if self.worker is None:
            return fn(self._codec, *args, **kwargs)
        from codec.core.isolated import WorkerError

        try:
            return self.worker.call(fn, *args, **kwargs)
        except WorkerError:  # it was killed: load the next one now, not when the next visitor comes
            threading.Thread(target=self._restart, name="model-restart", daemon=True).start()
            raise

    def _load(self) -> None:
        with self._lock:
            if self._notice is None and self._codec_error is None:
                started = time.perf_counter()
                try:
                    if self.worker is not None:
                        self.worker.start()
                        self._notice = self.worker.call(worker.notice)
                    else:
                        self._codec = worker.load_codec(**_load_args(self.settings))
                        self._notice = self._codec.backbone_notice
                    log.info("codec loaded in %.1f s: %s", time.perf_counter() - started, self._notice)
                except Exception as exc:  # remembered so every request gets the same clear message
                    log.exception("loading the codec failed")
                    self._codec_error = exc
            if self._codec_error is not None:
                raise self._codec_error

    def _restart(self) -> None:
        try:
            self.worker.start()
        except Exception:
            log.exception("restarting the model process failed")  # the next request tries again

    def warm_up(self) -> threading.Thread:
        """Load the codec in a background thread so the first visitor does not wait for it."""
        thread = threading.Thread(target=self._warm_up, name="codec-warm-up", daemon=True)
        thread.start()
        return thread

    def _warm_up(self):
        try:
            self._load()
        except Exception:
            pass  # already logged; the tabs show the message

    def close(self) -> None:
        """Stop the model process, if there is one."""
        if self.worker is not None:
            self.worker.close()

    def check_upload(self, path: str | Path) -> None:
        """Refuse a file over the upload limit (gradio enforces it too, for browser uploads)."""
        limit = self.settings.max_upload_mb
        size = Path(path).stat().st_size
        if size > limit * 1e6:
            raise gr.Error(f"The file is {_round_up(size / 1e6, 1)} MB; the limit is {limit:g} MB.")

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


def _load_args(settings: Settings) -> dict:
    s = settings
    return dict(backbone=_local_or_id(s, s.backbone), adapter=_local_or_id(s, s.adapter), mode=s.mode,
                device=s.device, dtype=s.dtype, max_pixels=s.max_pixels, max_steps=s.max_steps)


def _model_process(settings: Settings):
    """The model process of the settings, or None: `worker` is off, or `spaces` (ZeroGPU) is
    installed, whose `spaces.GPU` hands the GPU to functions of this process only."""
    if not settings.worker:
        return None
    if importlib.util.find_spec("spaces") is not None:
        log.info("ZeroGPU (spaces installed): the model runs in the server process, not in a worker")
        return None
    from codec.core.isolated import Isolated

    return Isolated(functools.partial(worker.load_codec, **_load_args(settings)), memory_mb=settings.worker_memory_mb,
                    timeout_s=settings.worker_timeout_s, name="model")


def _round_up(value: float, digits: int) -> str:
    """`value` rounded up at `digits` decimals, so a size over a limit never reads as equal to it."""
    return f"{math.ceil(value * 10**digits) / 10**digits:.{digits}f}"
