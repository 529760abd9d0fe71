"""The comparison of one image at one target: ours at the target, then each baseline at the bitrate
ours reached (so a baseline never gets more bits), then every per-image metric of the registry in
codec/evaluate/metrics.py. `python -m codec.evaluate` and the Space's Compress tab both run it.

Who runs a method is the caller's choice (`encode_ours`, `encode_baseline`): the evaluation calls
the codec in-process, the Space calls it in its model process. Methods that use the diffusion
backbone run one after the other in the calling thread (the backbone already uses every core); with
`threads` > 0 the image codecs and the metrics run in that many worker threads (Pillow, x265 and
torch release the GIL), with 0 everything runs in turn, so each method's time is its own.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from typing import Callable

from PIL import Image

from codec.evaluate import baselines, metrics

OURS = ("ours", "ours-analytic")
MODES = {"ours": "learned", "ours-analytic": "analytic"}
USES_BACKBONE = OURS + ("naive",)
NO_PRIOR_NOTE = "unavailable: no fitted prior for this backbone (python -m codec.evaluate.baselines fit-naive)"


@dataclass
class Outcome:
    """One method's file for one image, decoded and scored."""

    method: str
    aimed_bpp: float  # the target for ours; the bpp ours reached for the baselines
    data: bytes
    bpp: float
    reached: bool  # the file is not above aimed_bpp
    knob: float  # lambda or step (ours), Pillow quality or quantization step (baselines)
    image: Image.Image | None  # the reconstruction; None when the method cannot run here (see note)
    encode_s: float  # rate control included, for ours and the baselines alike
    decode_s: float
    note: str = ""
    scores: dict = field(default_factory=dict)  # metric name -> value, None where unavailable or undefined
    encoded: object = None  # ours: the codec's EncodeResult (t, steps, timings)


def ours_outcome(method: str, target_bpp: float, encoded, decoded) -> Outcome:
    """An Outcome from the codec's EncodeResult and DecodeResult."""
    return Outcome(method, target_bpp, encoded.data, encoded.bpp, encoded.bpp <= target_bpp, encoded.knob,
                   decoded.image, encoded.timings["total"], decoded.timings["total"], encoded=encoded)


def baseline_outcome(result: baselines.BaselineResult, aimed_bpp: float) -> Outcome:
    return Outcome(result.method, aimed_bpp, result.data, result.bpp, result.reached, float(result.quality),
                   result.image, result.search_s, result.decode_s)


def ours_with(codec) -> Callable[[str, Image.Image, float], Outcome]:
    """encode_ours for a DiffusionCodec in this process: "ours" in learned mode, "ours-analytic" in analytic."""

    def encode(method: str, image: Image.Image, target_bpp: float) -> Outcome:
        res = codec.encode(image, target_bpp=target_bpp, mode=MODES[method])
        return ours_outcome(method, target_bpp, res, codec.decode(res.data))

    return encode


def baselines_with(backbone=None) -> Callable[[str, Image.Image, float], Outcome]:
    """encode_baseline in this process; `backbone` is the codec's, for the naive latent baseline."""

    def encode(method: str, image: Image.Image, aimed_bpp: float) -> Outcome:
        result = baselines.encode_at_bpp(image, method, aimed_bpp, backbone=backbone if method == "naive" else None)
        return baseline_outcome(result, aimed_bpp)

    return encode


def score(original: Image.Image, outcome: Outcome) -> Outcome:
    """Every per-image metric of the registry (metrics.PER_IMAGE), None where it has no weights here
    or no value (e.g. MS-SSIM under 11 px a side)."""
    if outcome.image is not None:
        for name, metric in metrics.PER_IMAGE.items():
            try:
                outcome.scores[name] = metric.fn(original, outcome.image) if metrics.available(name) else None
            except metrics.MetricUndefined:
                outcome.scores[name] = None
    return outcome


def aim(target_bpp: float, done: dict) -> float:
    """The bpp the baselines aim at: what the first of ours reached, else the target itself."""
    return next((done[m].bpp for m in OURS if m in done), target_bpp)


def compare(original: Image.Image, target_bpp: float, methods, encode_ours, encode_baseline, *,
            done: dict | None = None, threads: int = 0, on_done: Callable[[Outcome], None] | None = None
            ) -> list[Outcome]:
    """Each of `methods` (ours first) on `original`: ours at `target_bpp`, the baselines at the bpp the
    first of ours reached (at `target_bpp` without ours), each scored. -> Outcomes in `methods` order.

    `done`: {method: Outcome} already computed (a resumed evaluation); they are neither run nor
    scored again, and a done "ours" still sets the baselines' aim. `on_done(outcome)` is called in the
    calling thread as each new outcome is scored, in completion order. A naive baseline without a
    fitted prior comes back as an Outcome without image, its note saying so.
    """
    done = dict(done or {})
    fresh = [m for m in methods if m not in done]
    unknown = [m for m in fresh if m not in OURS and m not in baselines.ALL_METHODS]
    if unknown:
        raise ValueError(f"unknown method(s): {', '.join(unknown)}")
    report = on_done or (lambda outcome: None)

    def run_baseline(method: str, at: float) -> Outcome:
        try:
            return encode_baseline(method, original, at)
        except baselines.NaivePriorMissing:
            return Outcome(method, at, b"", float("nan"), False, float("nan"), None, 0.0, 0.0, NO_PRIOR_NOTE)

    pool = ThreadPoolExecutor(max_workers=threads) if threads > 0 else None
    pending = []

    def submit(fn, *args) -> None:
        pending.append(pool.submit(fn, *args) if pool is not None else _at_once(fn, *args))
        for future in [f for f in pending if f.done()]:  # report what is finished, from this thread
            collect(future)

    def collect(future) -> None:
        pending.remove(future)
        outcome = future.result()
        done[outcome.method] = outcome
        report(outcome)

    try:
        for method in (m for m in fresh if m in OURS):
            outcome = encode_ours(method, original, target_bpp)
            done[method] = outcome
            submit(score, original, outcome)
        at = aim(target_bpp, done)
        for method in (m for m in fresh if m not in USES_BACKBONE):
            submit(lambda m: score(original, run_baseline(m, at)), method)
        for method in (m for m in fresh if m in USES_BACKBONE and m not in OURS):
            submit(score, original, run_baseline(method, at))
        for future in as_completed(list(pending)):
            collect(future)
    finally:
        if pool is not None:
            pool.shutdown()
    return [done[m] for m in methods]


def _at_once(fn, *args) -> Future:
    """pool.submit without a pool: run now, in this thread."""
    future = Future()
    future.set_result(fn(*args))
    return future
