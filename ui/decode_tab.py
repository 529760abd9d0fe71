"""Decode tab: a bitstream file -> the image, its header fields and its bitrate. Named API: `/decode`."""

from __future__ import annotations

from pathlib import Path

import gradio as gr

from codec.data.files import FAST_PNG
from ui import worker
from ui.context import AppContext
from ui.errors import friendly_errors


def build_decode_tab(ctx: AppContext) -> None:
    with gr.Row(equal_height=False):
        with gr.Column(scale=1, min_width=280):
            file_in = gr.File(label="Bitstream file (.dfcx, made by the Compress tab or `python -m codec encode`)",
                              type="filepath", elem_id="decode-input")
            run = gr.Button("Decode", variant="primary", elem_id="decode-btn")
            info = gr.Markdown(elem_id="decode-summary")
            header = gr.JSON(label="Header fields", elem_id="decode-header")
        with gr.Column(scale=2, min_width=300):
            image_out = gr.Image(label="Decoded image", format="png", interactive=False, elem_id="decoded-image",
                                 buttons=["download", "fullscreen"])
            png_file = gr.File(label="Decoded image (PNG)", elem_id="decoded-png")

    @friendly_errors
    def decode(bitstream):
        """Decode a bitstream file made by this codec. Returns the image, its header fields, a summary and the PNG."""
        if not bitstream:
            raise gr.Error("Upload a bitstream file first.")
        ctx.check_upload(bitstream)
        data = Path(bitstream).read_bytes()
        # In the model process: every header field (pixel limit included) is validated before decoding.
        fields, dec = ctx.run(worker.decode, data)
        png = ctx.scratch_dir() / f"{Path(bitstream).stem[:40] or 'decoded'}.png"
        dec.image.save(png, compress_level=FAST_PNG)
        summary = (f"**{len(data):,} bytes, {fields['bpp']:.4f} bpp**, {fields['width']}x{fields['height']} pixels, "
                   f"decoded in {1000 * dec.timings['total']:.0f} ms.")
        return str(png), fields, summary, str(png)

    run.click(decode, file_in, [image_out, header, info, png_file], api_name="decode", concurrency_id="model",
              concurrency_limit=ctx.settings.concurrency)
