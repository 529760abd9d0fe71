"""Compress tab: upload -> our codec at a target bpp -> the baselines at the bpp we reached.

Named API endpoints: `/compress` (ours + baselines, everything the tab shows except the
trajectory), `/trajectory` (the decoding trajectory of a bitstream; the page calls it right after
`/compress`) and `/baselines` (the baseline codecs alone, no diffusion model).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

import gradio as gr
import pandas as pd
from PIL import Image

from ui import views, worker
from ui.context import AppContext
from ui.errors import friendly_errors

BPP_PRESETS = {"Extreme 0.03": 0.03, "Low 0.06": 0.06, "Medium 0.1": 0.1, "High 0.2": 0.2}
TABLE_COLUMNS = ["method", "bytes", "bpp", "PSNR (dB)", "MS-SSIM", "encode ms", "decode ms", "note"]
CROP_SIZES = [48, 96, 160]
OURS = "Ours (diffusion)"
FAST_PNG = 1  # zlib level for the PNGs handed out: still lossless, ~4x faster to write than level 6


@dataclass
class Entry:
    """One method's result, as the table, the gallery and the crops show it."""

    label: str
    data_bytes: int
    bpp: float
    image: Image.Image | None  # None: the method could not run here (see note)
    encode_s: float
    decode_s: float
    note: str = ""
    psnr: float | None = None  # set by _scored
    ms_ssim: float | None = None  # None also where the image is too small for it (shown "n/a")


def _plain_upload_errors(ctx: AppContext, image: gr.Image) -> gr.Image:
    """Give unreadable uploads the codec's plain message (the command line's) instead of gradio's
    "Could not preprocess input component..." report, which quotes the upload's server path (a
    gr.Error raised in preprocess reaches the visitor as it is).

    The instance's method is wrapped rather than subclassing gr.Image, because gradio's component
    metaclass writes a .pyi stub next to any module that subclasses a component."""
    preprocess = image.preprocess

    def checked(payload):
        try:
            return preprocess(payload)
        except gr.Error:
            raise
        except Exception:
            from codec.core.images import NOT_AN_IMAGE, ImageError, load_image

            path = getattr(payload, "path", None)
            if not isinstance(path, str):  # e.g. a data: URL that is not an image
                raise gr.Error(NOT_AN_IMAGE, print_exception=False) from None
            try:
                load_image(path, max_pixels=ctx.settings.max_pixels)
            except ImageError as exc:
                raise gr.Error(str(exc), print_exception=False) from None
            raise gr.Error(NOT_AN_IMAGE, print_exception=False) from None

    image.preprocess = checked
    return image


def baseline_choices() -> list[tuple[str, str]]:
    """(label, key) pairs of the baseline codecs, in the order codec.evaluate.baselines lists them."""
    from codec.evaluate.baselines import ALL_METHODS, LABELS

    return [(LABELS[key], key) for key in ALL_METHODS]


def build_compress_tab(ctx: AppContext, examples: list[str]) -> None:
    choices = baseline_choices()
    with gr.Row(equal_height=False):
        with gr.Column(scale=1, min_width=300):
            # image_mode=None: gradio hands over the uploaded file as it is (no decoding and
            # re-saving before our size check); codec.core.images.load_image converts it.
            image_in = _plain_upload_errors(ctx, gr.Image(
                label="Image", type="filepath", sources=["upload", "clipboard"], height=300, elem_id="compress-input",
                image_mode=None,
            ))
            if examples:
                gr.Examples(examples=examples, inputs=image_in, label="Examples (click one)", examples_per_page=4)
            bpp = gr.Slider(0.01, 0.5, value=0.1, step=0.005, label="Target bitrate (bits per pixel)", elem_id="bpp")
            with gr.Row(elem_classes="presets"):
                preset_buttons = [(gr.Button(name, size="sm", min_width=60), value) for name, value in BPP_PRESETS.items()]
            methods = gr.CheckboxGroup(
                choices=choices, value=[key for _, key in choices], label="Baselines to compare", elem_id="methods"
            )
            run = gr.Button("Compress", variant="primary", elem_id="compress-btn")
        with gr.Column(scale=2, min_width=300):
            summary = gr.Markdown("Results appear here: pick an image and press **Compress**.", elem_id="compress-summary")
            slider = gr.ImageSlider(
                label="Original | ours (drag the handle)", format="png", type="filepath", max_height=520,
                elem_id="compare-slider", interactive=False,
            )
            with gr.Row():
                bitstream_file = gr.File(label="Bitstream (decode it in the Decode tab)", elem_id="bitstream-file",
                                         height=90, interactive=False)
                png_file = gr.File(label="Reconstruction (PNG)", elem_id="png-file", height=90, interactive=False)
    table = gr.Dataframe(headers=TABLE_COLUMNS, label="Rate and distortion", interactive=False, elem_id="results-table")
    gallery = gr.Gallery(label="Baselines at the closest bitrate they reach", format="png", columns=3, height="auto",
                         object_fit="contain", elem_id="baseline-gallery")
    trajectory = gr.Image(
        label="Decoding trajectory: the predicted clean image at each denoising step, from the transmitted "
        "timestep t (orange) to t=0", format="png", interactive=False, elem_id="trajectory", buttons=["download", "fullscreen"],
    )
    with gr.Accordion("Zoomed crops: the same region in every reconstruction", open=True, elem_id="crops-panel"):
        gr.Markdown("Click on the overview, or move the sliders, to choose the region.")
        with gr.Row(equal_height=False):
            with gr.Column(scale=1, min_width=260):
                overview = gr.Image(label="Overview (click to move the crop)", format="png", interactive=False,
                                    elem_id="crop-overview", height=260)
                crop_x = gr.Slider(0, 100, value=50, step=1, label="Crop centre, x (%)", elem_id="crop-x")
                crop_y = gr.Slider(0, 100, value=50, step=1, label="Crop centre, y (%)", elem_id="crop-y")
                crop_size = gr.Radio(CROP_SIZES, value=96, label="Crop size (pixels)")
            with gr.Column(scale=2, min_width=300):
                crops = gr.Gallery(label="Crops (3x, nearest neighbour)", format="png", columns=3, height="auto",
                                   object_fit="contain", elem_id="crop-gallery")
    shown = gr.State(None)  # {"original": path, "entries": [(path, caption), ...]} of the last run

    for button, value in preset_buttons:
        button.click(lambda v=value: v, None, bpp, queue=False, api_visibility="private")

    limit = ctx.settings.concurrency

    @friendly_errors
    def compress(image, target_bpp: float, methods: list[str], progress=gr.Progress()):
        """Compress `image` with the diffusion codec at `target_bpp`, then each baseline in `methods` at
        the bpp the diffusion codec reached. Returns the comparison slider, the baselines gallery, the
        table, the bitstream and PNG files, and a summary. (The decoding trajectory comes from
        `/trajectory`, which the page calls next, so the comparison shows without waiting for it.)"""
        progress(0.0, desc="Loading the model")
        original = _load(ctx, image)
        out = ctx.scratch_dir()
        res, dec = ctx.run(worker.encode_and_decode, original, float(target_bpp), progress=progress)
        ours = Entry(OURS, len(res.data), res.bpp, dec.image, res.timings["total"], dec.timings["total"])
        entries = _compare(ctx, original, ours, methods or [], res.bpp, progress, start=0.7)
        stem = Path(image).stem[:40] or "image"
        bitstream = out / f"{stem}_{res.bpp:.3f}bpp.dfcx"
        bitstream.write_bytes(res.data)
        png = out / f"{stem}_{res.bpp:.3f}bpp.png"
        dec.image.save(png, compress_level=FAST_PNG)
        original_png = out / "original.png"
        original.save(original_png, compress_level=FAST_PNG)
        saved = _save_entries(out, entries)
        state = {"original": str(original_png), "entries": saved}
        progress(1.0, desc="Done")
        return (
            (str(original_png), str(png)), saved[1:], _table(entries), str(bitstream), str(png),
            _summary(ctx.backbone_notice or "", entries[0], res, float(target_bpp)), state,
        )

    @friendly_errors
    def baselines(image, target_bpp: float, methods: list[str], progress=gr.Progress()):
        """Only the baseline codecs (no diffusion model) at `target_bpp`: the captioned gallery and the table."""
        original = _load(ctx, image)
        if not methods:
            raise gr.Error("Pick at least one baseline.")
        entries = _compare(ctx, original, None, methods, float(target_bpp), progress)
        return _save_entries(ctx.scratch_dir(), entries), _table(entries)

    @friendly_errors
    def trajectory_of(bitstream, progress=gr.Progress()):
        """The decoding trajectory of a bitstream: the predicted clean image after each denoising step,
        from the transmitted timestep t (highlighted) to t=0, side by side in one PNG."""
        if not bitstream:
            raise gr.Error("Compress an image first.")
        ctx.check_upload(bitstream)
        return ctx.run(worker.trajectory, Path(bitstream).read_bytes(), progress=progress)

    def update_crops(state, x: float, y: float, size: int):
        if not state:
            return None, []
        return _crops(state, x / 100, y / 100, int(size))

    def click_crop(state, size: int, evt: gr.SelectData):
        if not state or not evt.index:
            return gr.skip(), gr.skip(), None, []
        with Image.open(state["original"]) as im:
            width, height = im.size
        x, y = 100 * evt.index[0] / width, 100 * evt.index[1] / height
        return round(x), round(y), *_crops(state, x / 100, y / 100, int(size))

    outputs = [slider, gallery, table, bitstream_file, png_file, summary, shown]
    crop_inputs = [shown, crop_x, crop_y, crop_size]
    run.click(lambda: None, None, trajectory, queue=False, api_visibility="private")  # no stale trajectory
    compressed = run.click(compress, [image_in, bpp, methods], outputs, api_name="compress", concurrency_id="model",
                           concurrency_limit=limit)
    # Crops are a few Pillow calls on images already made: outside the queue, so dragging a
    # slider takes no queue place (and no share of a visitor's queue joins, ui.guard).
    light = {"api_visibility": "private", "queue": False}
    compressed.success(update_crops, crop_inputs, [overview, crops], **light)
    compressed.success(trajectory_of, bitstream_file, trajectory, api_name="trajectory", concurrency_id="model",
                       concurrency_limit=limit)
    for event in (crop_x.release, crop_y.release, crop_size.change):
        event(update_crops, crop_inputs, [overview, crops], **light)
    overview.select(click_crop, [shown, crop_size], [crop_x, crop_y, overview, crops], **light)
    # API only (no button in the page): the same inputs, the gallery and the table.
    gr.Button(visible=False).click(
        baselines, [image_in, bpp, methods], [gallery, table], api_name="baselines", concurrency_id="model",
        concurrency_limit=limit,
    )


def _load(ctx: AppContext, image) -> Image.Image:
    if not image:
        raise gr.Error("Upload an image or pick an example first.")
    ctx.check_upload(image)
    return ctx.run(worker.load_upload, str(image))


def _compare(ctx: AppContext, original, ours: Entry | None, methods, bpp, progress, start=0.0) -> list[Entry]:
    """`ours` (when given) and each baseline at the largest bpp not above `bpp`, in the order of
    `methods`, each scored (PSNR, MS-SSIM) against the original.

    Two worker threads run the image codecs and the metrics (Pillow, x265 and torch release the GIL);
    the naive latent baseline uses the backbone, which already uses every core, so it runs on its
    own (in the model process). A baseline that cannot run here (no fitted naive prior for this
    backbone) becomes a note."""
    from codec.evaluate.baselines import NaivePriorMissing, encode_at_bpp

    def one(method: str) -> Entry:
        try:
            b = (ctx.run(worker.naive_baseline, original, bpp) if method == "naive"
                 else encode_at_bpp(original, method, bpp))
        except NaivePriorMissing:
            return Entry(short_label(method), 0, float("nan"), None, 0.0, 0.0, "unavailable: no fitted prior for "
                         "this backbone (python -m codec.evaluate.baselines fit-naive)")
        note = "" if b.reached else "cannot go this low: its smallest file"
        return _scored(original, Entry(short_label(method), len(b.data), b.bpp, b.image, b.encode_s, b.decode_s, note))

    results: dict[str, Entry] = {}
    progress(start, desc="Baselines")
    with ThreadPoolExecutor(max_workers=2) as pool:
        scoring_ours = pool.submit(_scored, original, ours) if ours is not None else None
        futures = {pool.submit(one, m): m for m in methods if m != "naive"}
        if "naive" in methods:
            results["naive"] = one("naive")
        for future in as_completed(futures):
            results[futures[future]] = future.result()
            progress(start + (1 - start) * len(results) / len(methods), desc=f"Baselines: {futures[future]} done")
        first = [scoring_ours.result()] if scoring_ours is not None else []
    return first + [results[m] for m in methods]


def _scored(original: Image.Image, entry: Entry) -> Entry:
    from codec.evaluate.metrics import MetricUndefined, ms_ssim, psnr

    entry.psnr = psnr(original, entry.image)
    try:
        entry.ms_ssim = ms_ssim(original, entry.image)
    except MetricUndefined:  # fewer than 11 px on a side: the table says n/a
        entry.ms_ssim = None
    return entry


def short_label(method: str) -> str:
    """"HEVC-intra (HEIC, x265)" -> "HEVC-intra": the name without its details, for captions and the table."""
    from codec.evaluate.baselines import LABELS

    return LABELS[method].split(" (")[0]


def _save_entries(out: Path, entries: list[Entry]) -> list[tuple[str, str]]:
    """Write each reconstruction as PNG; return (path, caption) pairs for the gallery and the crops."""
    items = []
    for i, e in enumerate(entries):
        if e.image is None:
            continue
        path = out / f"{i:02d}.png"
        e.image.save(path, compress_level=FAST_PNG)
        items.append((str(path), f"{e.label} · {e.bpp:.3f} bpp"))
    return items


def _table(entries: list[Entry]) -> pd.DataFrame:
    rows = [
        [e.label, e.data_bytes, round(e.bpp, 4), round(e.psnr, 2), "n/a" if e.ms_ssim is None else round(e.ms_ssim, 4),
         round(1000 * e.encode_s), round(1000 * e.decode_s), e.note]
        if e.image is not None else [e.label, None, None, None, None, None, None, e.note]
        for e in entries
    ]
    return pd.DataFrame(rows, columns=TABLE_COLUMNS)


def _crops(state: dict, x: float, y: float, size: int):
    with Image.open(state["original"]) as im:
        original = im.convert("RGB")
    box = views.crop_box(original.size, x, y, size)
    crops = [(views.zoomed_crop(original, box), "Original")]
    for path, caption in state["entries"]:
        with Image.open(path) as im:
            crops.append((views.zoomed_crop(im.convert("RGB"), box), caption))
    return views.mark_box(original, box), crops


def _summary(notice: str, ours: Entry, res, target_bpp: float) -> str:
    if "WARNING" in notice or "tiny" in notice.lower():
        notice = f"⚠️ **{notice}**"
    return (
        f"{notice}\n\n**Ours:** {ours.data_bytes:,} bytes = **{ours.bpp:.4f} bpp** (target {target_bpp:.3f}); "
        f"predicted timestep **t = {res.t}**, {res.steps} denoising step{'s' if res.steps != 1 else ''}; encode {1000 * ours.encode_s:.0f} ms, "
        f"decode {1000 * ours.decode_s:.0f} ms."
    )
