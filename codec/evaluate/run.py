"""The evaluation loop: every image x target x method through codec/evaluate/compare.py, sharded
over processes with accelerate, resumable, merged by the main process into codec/evaluate/report.py's
outputs.

Sharding: `accelerate launch` starts the processes; `PartialState.split_between_processes` gives
each a contiguous share of the image list (the same list in every process, so the split does not
depend on what is already done). Each process writes one file per image, rows/<image>.json,
replaced atomically after every (method, target) it finishes, so a crash or a kill loses at most
the one in flight; re-running the same command skips every row on disk. After a barrier the main
process reads all rows and writes exactly what a one-process run writes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

from PIL import Image

from codec.data import datasets
from codec.data.files import write_atomically, write_png
from codec.data.photos import VALIDATION_PHOTOS
from codec.evaluate import baselines, compare, metrics, report

OURS = compare.OURS
METHODS = OURS + baselines.ALL_METHODS
# A process may finish its share long before the others; the barrier waits for them (torch's
# default would give up after 10-30 minutes).
BARRIER_TIMEOUT = timedelta(days=7)


class EvaluationError(Exception):
    """The evaluation cannot run as asked; the message says why."""


@dataclass
class Settings:
    methods: list[str]  # in METHODS order: ours first, the baselines aim at the bpp it reached
    targets: list[float]
    backbone: str = "demo"
    adapter: str | None = None
    resize: int | None = None
    crop: tuple[int, int] | None = None
    naive_train: str | None = None
    save_reconstructions: bool = False
    max_pixels: int | None = None  # the codec's limit on the padded area (None: its default)
    ours_if_trained: bool = False  # drop "ours" (the learned mode) when the backbone has no learned adapter

    def identity(self) -> dict:
        """What makes two runs' rows comparable: rows of another backbone or crop are never reused."""
        return {"backbone": self.backbone, "adapter": self.adapter, "resize": self.resize,
                "crop": list(self.crop) if self.crop else None}


@dataclass
class Row:
    image: str
    method: str
    target_bpp: float
    aimed_bpp: float  # the target for ours; the bpp ours reached on this image for the baselines
    bpp: float
    reached: bool  # bpp <= aimed_bpp
    knob: float
    encode_s: float
    decode_s: float
    scores: dict = field(default_factory=dict)  # metric -> value, or None when unavailable/undefined

    @classmethod
    def of(cls, image: str, target: float, o: compare.Outcome) -> "Row":
        return cls(image, o.method, target, o.aimed_bpp, o.bpp, o.reached, o.knob, o.encode_s, o.decode_s,
                   dict(o.scores))

    def as_outcome(self) -> compare.Outcome:
        """What compare needs of a finished row (its bpp sets the baselines' aim)."""
        return compare.Outcome(self.method, self.aimed_bpp, b"", self.bpp, self.reached, self.knob, None,
                               self.encode_s, self.decode_s, scores=dict(self.scores))


def parse_methods(text: str) -> list[str]:
    methods = [m.strip() for m in text.split(",") if m.strip()]
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise EvaluationError(f"unknown method(s) {', '.join(unknown) or '(none)'}; choose from {', '.join(METHODS)}")
    return [m for m in METHODS if m in methods]


def parse_targets(text: str) -> list[float]:
    try:
        values = sorted({float(v) for v in text.split(",") if v.strip()})
    except ValueError:
        raise EvaluationError(f"--bpp must be a comma-separated list of numbers, got {text!r}") from None
    if not values or not all(0 < v < 64 for v in values):
        raise EvaluationError("--bpp needs positive values (below 64)")
    return values


# ----------------------------------------------------------------------------------------------
# Rows on disk


class RowStore:
    """rows/<image>.json under the output folder: the finished rows of one image, in any order."""

    def __init__(self, out: Path):
        self.folder = out / "rows"

    def path(self, image: str) -> Path:
        # Image names may contain "/" (sub-folders) or anything else: the file is named by a hash.
        digest = hashlib.sha256(image.encode()).hexdigest()[:20]
        return self.folder / f"{Path(image).stem[:40]}-{digest}.json"

    def load(self, image: str) -> dict[tuple[str, float], Row]:
        try:
            stored = json.loads(self.path(image).read_text())
        except FileNotFoundError:
            return {}
        rows = [Row(**r) for r in stored["rows"]]
        return {(r.method, r.target_bpp): r for r in rows if r.image == image}

    def save(self, image: str, rows: dict[tuple[str, float], Row]) -> None:
        body = {"image": image, "rows": [dataclasses.asdict(r) for r in rows.values()]}
        write_atomically(self.path(image), (json.dumps(body) + "\n").encode())

    def claim(self, identity: dict) -> None:
        """Record which run these rows belong to; refuse a folder holding another run's rows."""
        path = self.folder / "run.json"
        if path.is_file():
            stored = json.loads(path.read_text())
            if stored != identity:
                raise EvaluationError(
                    f"{self.folder.parent} holds rows of another evaluation ({stored}); this one is {identity}. "
                    "Use another --out, or delete its rows/ folder to start over.")
            return
        write_atomically(path, (json.dumps(identity) + "\n").encode())


def reconstruction_path(out: Path, method: str, target: float, image: str) -> Path:
    """reconstructions/<method>/<target>/<image name>, ".png" added unless the name ends with it."""
    name = image if image.lower().endswith(".png") else f"{image}.png"
    return out / "reconstructions" / method / f"{target:g}" / name


# ----------------------------------------------------------------------------------------------
# The loop


def _state():
    import torch
    from accelerate import PartialState

    return PartialState(cpu=not torch.cuda.is_available(), timeout=BARRIER_TIMEOUT)


def _load_codec(settings: Settings, device):
    if not any(m in compare.USES_BACKBONE for m in settings.methods):
        return None
    from codec.core.backbone import BackboneUnavailable
    from codec.core.diffusion_codec import DiffusionCodec

    try:
        limit = {} if settings.max_pixels is None else {"max_pixels": settings.max_pixels}
        codec = DiffusionCodec.load(backbone=settings.backbone, adapter=settings.adapter or "auto",
                                    device=None if device.type == "cpu" else str(device), **limit)
    except (BackboneUnavailable, OSError, ValueError) as err:
        raise EvaluationError(str(err)) from None
    if "ours" in settings.methods and "learned" not in codec.adapters:
        if not settings.ours_if_trained:
            raise EvaluationError(f"'ours' needs a trained adapter for backbone {settings.backbone!r} "
                                  "(give --adapter PATH, or evaluate 'ours-analytic')")
        settings.methods.remove("ours")  # the default list: every method this backbone can run
    return codec


def _ensure_naive_prior(codec, train_dir: str | None, files, log) -> None:
    try:
        baselines.load_naive_prior(codec.backbone)
        return
    except baselines.NaivePriorMissing as err:
        if not train_dir:
            raise EvaluationError(f"{err} (or pass --naive-train DIR to fit it now)") from None
    evaluated = {f.path.resolve() for f in files}
    train = [f.path for f in datasets.list_images(train_dir)
             if f.path.resolve() not in evaluated and f.path.name not in VALIDATION_PHOTOS]
    if not train:
        raise EvaluationError("--naive-train has no photos besides the evaluated ones")
    log(f"fitting the naive prior on {len(train)} photos from {train_dir} (evaluated and validation photos excluded)")
    baselines.fit_naive_prior(codec.backbone, train)


class _NoBar:
    def __init__(self, total: int, initial: int, process: int, processes: int):
        pass

    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


def evaluate(files: list[datasets.ImageFile], settings: Settings, out: Path, log=lambda msg: None,
             progress_bar=_NoBar) -> report.Report | None:
    """Run this process's share of `files`; the main process then merges every process's rows and
    writes the outputs (returns their Report; the other processes return None).

    `progress_bar(total, initial, process, processes)` -> an object with update(n) and close(), one per
    process (counting (image, target) pairs); `log(message)` gets one line per finished row.
    """
    state = _state()
    store = RowStore(out)
    with state.main_process_first():  # the main process claims the folder and fits a missing prior
        store.claim(settings.identity())
        codec = _load_codec(settings, state.device)
        if codec is not None and "naive" in settings.methods:
            _ensure_naive_prior(codec, settings.naive_train, files, log)
    if codec is not None and state.is_main_process:
        log(codec.backbone_notice)
    encode_ours = compare.ours_with(codec) if codec is not None else None
    encode_baseline = compare.baselines_with(codec.backbone if codec is not None else None)
    save = settings.save_reconstructions or any(metrics.available(name) for name in metrics.PER_SET)

    with state.split_between_processes(files) as share:
        units = [(f, t) for f in share for t in settings.targets]
        stored = {f.name: store.load(f.name) for f in share}
        todo = {(f.name, t) for f, t in units
                if any((m, t) not in stored[f.name] for m in settings.methods)}
        bar = progress_bar(len(units), len(units) - len(todo), state.process_index, state.num_processes)
        for file in share:
            if not any((file.name, t) in todo for t in settings.targets):
                continue
            image = datasets.load(file, settings.resize, settings.crop)
            rows = stored[file.name]
            for target in settings.targets:
                if (file.name, target) not in todo:
                    continue

                def finished(outcome: compare.Outcome, target=target, file=file, rows=rows):
                    if save and outcome.image is not None:
                        path = reconstruction_path(out, outcome.method, target, file.name)
                        write_png(path, outcome.image)
                    rows[(outcome.method, target)] = Row.of(file.name, target, outcome)
                    store.save(file.name, rows)
                    log(_line(file.name, target, outcome))

                done = {m: r.as_outcome() for (m, t), r in rows.items() if t == target}
                compare.compare(image, target, settings.methods, encode_ours, encode_baseline, done=done,
                                on_done=finished)
                bar.update(1)
        bar.close()
    state.wait_for_everyone()
    if not state.is_main_process:
        return None
    return merge(files, settings, out, store, log)


def _line(name: str, target: float, o: compare.Outcome) -> str:
    if o.image is None:
        return f"{name} {o.method} target {target:g}: {o.note}"
    psnr, msssim = o.scores.get("psnr"), o.scores.get("ms_ssim")
    return (f"{name} {o.method} target {target:g}: {o.bpp:.4f} bpp, PSNR {psnr:.2f} dB"
            + ("" if msssim is None else f", MS-SSIM {msssim:.4f}") + ("" if o.reached else " (target not reachable)"))


def merge(files, settings: Settings, out: Path, store: RowStore, log=lambda msg: None) -> report.Report:
    """Every process's rows for these files, methods and targets, in a fixed order -> the outputs."""
    rows, missing = [], []
    for file in files:
        stored = store.load(file.name)
        for target in settings.targets:
            for method in settings.methods:
                row = stored.get((method, target))
                if row is None:
                    missing.append(f"{file.name} {method} {target:g}")
                else:
                    rows.append(row)
    if missing:
        raise EvaluationError(f"{len(missing)} rows are missing after every process finished, e.g. {missing[0]}")
    set_scores = _set_scores(files, settings, out, log)
    return report.write(rows, set_scores, settings.methods, settings.targets, out)


def _set_scores(files, settings: Settings, out: Path, log) -> dict:
    """{(method, target): {metric: value or None}} for the set metrics (patch FID/KID) that can run here."""
    names = [name for name in metrics.PER_SET if metrics.available(name)]
    if not names:
        return {}
    originals = [datasets.load(f, settings.resize, settings.crop) for f in files]
    scores = {}
    for method in settings.methods:
        for target in settings.targets:
            paths = [reconstruction_path(out, method, target, f.name) for f in files]
            if not all(p.is_file() for p in paths):
                log(f"set metrics skipped for {method} at {target:g}: reconstructions missing (not saved before)")
                continue
            decoded = [Image.open(p).convert("RGB") for p in paths]
            scores[(method, target)] = {}
            for name in names:
                try:
                    scores[(method, target)][name] = metrics.PER_SET[name].fn(originals, decoded)
                except ValueError as err:  # too few patches for a set metric
                    log(f"{name.upper()} skipped for {method} at {target:g}: {err}")
                    scores[(method, target)][name] = None
    return scores
