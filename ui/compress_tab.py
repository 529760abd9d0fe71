"""Compress tab: upload -> our codec at a target bpp -> the baselines at the bpp we reached.

Named API endpoints: `/compress` (ours + baselines, everything the tab shows except the
trajectory), `/trajectory` (the decoding trajectory of a bitstream; the page calls it right after
`/compress`) and `/baselines` (the baseline codecs alone, no diffusion model).
"""

from __future__ import annotations

from pathlib import Path

import gradio as gr
import pandas as pd
from PIL import Image

from codec.data.files import FAST_PNG
from ui import views, worker
from ui.context import AppContext
from ui.errors import friendly_errors

BPP_PRESETS = {"Extreme 0.03": 0.03, "Low 0.06": 0.06, "Medium 0.1": 0.1, "High 0.2": 0.2}
CROP_SIZES = [48, 96, 160]
OURS = "Ours (diffusion)"


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
    table = gr.Dataframe(headers=_table_columns(), label="Rate and distortion", interactive=False, elem_id="results-table")
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
        entries = _compare(ctx, original, ["ours", *(methods or [])], float(target_bpp), progress, start=0.7)
        res, dec_image = entries[0].encoded, entries[0].image
        stem = Path(image).stem[:40] or "image"
        bitstream = out / f"{stem}_{res.bpp:.3f}bpp.dfcx"
        bitstream.write_bytes(res.data)
        png = out / f"{stem}_{res.bpp:.3f}bpp.png"
        dec_image.save(png, compress_level=FAST_PNG)
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
        entries = _compare(ctx, original, methods, float(target_bpp), progress)
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


def _compare(ctx: AppContext, original, methods: list[str], target_bpp: float, progress, start=0.0):
    """codec.evaluate.compare's pipeline, run here: "ours" (when asked) at `target_bpp` in the model
    process, then each baseline at the bpp ours reached, in the order of `methods`, each scored
    with every metric of codec.evaluate.metrics. The naive latent baseline uses the backbone, so it
    runs in the model process too; the image codecs and the metrics run in two threads here."""
    from codec.evaluate import compare
    from codec.evaluate.baselines import encode_at_bpp

    def encode_ours(method, image, target):
        res, dec = ctx.run(worker.encode_and_decode, image, target, progress=progress)
        progress(start, desc="Baselines")
        return compare.ours_outcome(method, target, res, dec)

    def encode_baseline(method, image, aimed):
        result = (ctx.run(worker.naive_baseline, image, aimed) if method == "naive"
                  else encode_at_bpp(image, method, aimed))
        return compare.baseline_outcome(result, aimed)

    baselines = [m for m in methods if m not in compare.OURS]
    finished = []

    def done(outcome):
        if outcome.method not in compare.OURS:
            finished.append(outcome.method)
            progress(start + (1 - start) * len(finished) / len(baselines), desc=f"Baselines: {outcome.method} done")

    if "ours" not in methods:
        progress(start, desc="Baselines")
    return compare.compare(original, target_bpp, methods, encode_ours, encode_baseline, threads=2, on_done=done)


def _label(entry) -> str:
    return OURS if entry.method == "ours" else short_label(entry.method)


def _note(entry) -> str:
    """The outcome's own note, or for a file above its aim (ours at a tiny image's container size, a
    baseline at its lowest quality) that it is that method's smallest file."""
    if entry.note or entry.reached:
        return entry.note
    return "cannot go this low: its smallest file"


def short_label(method: str) -> str:
    """"HEVC-intra (HEIC, x265)" -> "HEVC-intra": the name without its details, for captions and the table."""
    from codec.evaluate.baselines import LABELS

    return LABELS[method].split(" (")[0]


def _save_entries(out: Path, entries) -> list[tuple[str, str]]:
    """Write each reconstruction as PNG; return (path, caption) pairs for the gallery and the crops."""
    items = []
    for i, e in enumerate(entries):
        if e.image is None:
            continue
        path = out / f"{i:02d}.png"
        e.image.save(path, compress_level=FAST_PNG)
        items.append((str(path), f"{_label(e)} · {e.bpp:.3f} bpp"))
    return items


def _shown_metrics() -> list[str]:
    """The registry's per-image metrics that can run here (those needing weights only when on disk)."""
    from codec.evaluate import metrics

    return [name for name in metrics.PER_IMAGE if metrics.available(name)]


def _table_columns() -> list[str]:
    from codec.evaluate import metrics

    labels = [metrics.PER_IMAGE[name].label for name in _shown_metrics()]
    return ["method", "bytes", "bpp", *labels, "encode ms", "decode ms", "note"]


def _table(entries) -> pd.DataFrame:
    shown = _shown_metrics()

    def value(v):  # 4 significant digits; None: no value for this image (e.g. MS-SSIM under 11 px)
        return "n/a" if v is None else float(f"{v:.4g}")

    rows = [
        [_label(e), len(e.data), round(e.bpp, 4), *[value(e.scores.get(name)) for name in shown],
         round(1000 * e.encode_s), round(1000 * e.decode_s), _note(e)]
        if e.image is not None else [_label(e), None, None, *[None] * len(shown), None, None, _note(e)]
        for e in entries
    ]
    return pd.DataFrame(rows, columns=_table_columns())


def _crops(state: dict, x: float, y: float, size: int):
    with Image.open(state["original"]) as im:
        original = im.convert("RGB")
    box = views.crop_box(original.size, x, y, size)
    crops = [(views.zoomed_crop(original, box), "Original")]
    for path, caption in state["entries"]:
        with Image.open(path) as im:
            crops.append((views.zoomed_crop(im.convert("RGB"), box), caption))
    return views.mark_box(original, box), crops


def _summary(notice: str, ours, res, target_bpp: float) -> str:
    if "WARNING" in notice or "tiny" in notice.lower():
        notice = f"⚠️ **{notice}**"
    return (
        f"{notice}\n\n**Ours:** {len(ours.data):,} bytes = **{ours.bpp:.4f} bpp** (target {target_bpp:.3f}"
        + ("" if ours.reached else ": not reachable for this image, this is its smallest file") + "); "
        f"predicted timestep **t = {res.t}**, {res.steps} denoising step{'s' if res.steps != 1 else ''}; encode {1000 * ours.encode_s:.0f} ms, "
        f"decode {1000 * ours.decode_s:.0f} ms."
    )
