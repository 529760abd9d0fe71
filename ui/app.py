"""Builds the whole Space: a FastAPI app with /health, the study API at /api/study, the raters'
page at /study (ui.rater_page), and the Gradio Blocks (Compress, Decode, Results, Admin tabs)
mounted at "/"; `main()` serves it with uvicorn.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import gradio as gr
from fastapi import FastAPI

from ui.admin_tab import build_admin_tab
from ui.compress_tab import build_compress_tab
from ui.context import AppContext
from ui.decode_tab import build_decode_tab
from ui.guard import GradioGuard
from ui.rater_page import PATH as RATER_PATH, add_rater_page
from ui.results_tab import build_results_tab
from ui.settings import ROOT, Settings, load_settings

log = logging.getLogger(__name__)

TAB_IDS = ("compress", "decode", "results", "admin")
EXAMPLES_DIR = ROOT / "assets" / "examples"
CSS_PATH = Path(__file__).with_name("style.css")
INTRO = """# Lossy image compression with foundation diffusion models
Reference implementation of Relic et al., ECCV 2024: the image's latent is quantized and entropy
coded; the decoder treats the dequantized latent as a noisy latent at a predicted timestep *t* and
removes the quantization error with a few denoising steps. Compare it with classic codecs at the
same bitrate and decode bitstreams."""
STUDY_LINK = f"**Preference study:** [take part]({RATER_PATH}) (a page of its own, as raters see it)."


def build_app(settings: Settings) -> tuple[FastAPI, gr.Blocks]:
    ctx = AppContext(settings, study=_study_service(settings))
    # Scratch files and gradio's cache copies live at most 30 minutes, checked every 10 minutes.
    with gr.Blocks(title="Diffusion codec", delete_cache=(600, 1800)) as blocks:
        gr.Markdown(INTRO, elem_id="intro")
        if ctx.study is not None:
            gr.Markdown(STUDY_LINK, elem_id="study-link")
        with gr.Tabs() as tabs:
            with gr.Tab("Compress", id="compress") as compress_tab:
                build_compress_tab(ctx, examples=sorted(str(p) for p in EXAMPLES_DIR.glob("*.png")))
            with gr.Tab("Decode", id="decode") as decode_tab:
                build_decode_tab(ctx)
            with gr.Tab("Results", id="results") as results_tab:
                timer = build_results_tab(ctx, blocks, results_tab)
            with gr.Tab("Admin", id="admin") as admin_tab:
                build_admin_tab(ctx)
        if timer is not None:  # leaving the Results tab stops its polling
            for other in (compress_tab, decode_tab, admin_tab):
                other.select(lambda: gr.Timer(active=False), None, timer, api_visibility="private", queue=False)
        blocks.load(_initial_tab, None, tabs, api_visibility="private", queue=False)
    # The model events set their own limit (settings.concurrency, shared through concurrency_id
    # "model"); everything else (study clicks, crops) is light and must not wait behind a model run.
    blocks.queue(max_size=settings.queue_size, default_concurrency_limit=None)

    app = FastAPI(title="Diffusion codec Space")

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok", "codec_loaded": ctx.codec_loaded, "backbone": ctx.backbone_notice,
                "study": ctx.study is not None}

    if ctx.study is not None:
        from study.http import API_PREFIX, build_api

        app.mount(API_PREFIX, build_api(ctx.study))   # its own limits and error answers (study.limits)
        add_rater_page(app)     # before Gradio takes "/": platform links to "/" are sent there

    app = gr.mount_gradio_app(
        app, blocks, path="/", max_file_size=int(settings.max_upload_mb * 1e6), css_paths=[CSS_PATH],
        theme=gr.themes.Soft(primary_hue="orange"), allowed_paths=[str(EXAMPLES_DIR)], footer_links=["api", "gradio"],
        run_history=False, show_error=True,
    )
    # mount_gradio_app leaves it False, which skips gradio's check that an input file was uploaded
    # (any server path posted as a file would be copied in and handed to the handler).
    blocks.has_launched = True
    # Gradio reads whole bodies and queues any event for anyone: bound both (ui.guard).
    app.add_middleware(GradioGuard, max_upload_mb=settings.max_upload_mb, joins_at_once=settings.client_queue_burst,
                       joins_per_minute=settings.client_queue_per_minute)
    app.state.ctx = ctx
    return app, blocks


def _initial_tab(request: gr.Request):
    """`?tab=decode` opens that tab (crowd-platform links never get here: ui.rater_page)."""
    params = request.query_params
    if params.get("tab") in TAB_IDS:
        return gr.Tabs(selected=params["tab"])
    return gr.skip()


def _study_service(settings: Settings):
    """The StudyService of `study_file` on `database_url` (default: SQLite in results_dir), or None."""
    study_file = settings.resolve(settings.study_file)
    if study_file is None:
        return None
    if not study_file.is_file():
        log.warning("study file %s not found: the study is disabled", study_file)
        return None
    from study.service import StudyService

    results = settings.resolve(settings.results_dir)
    results.mkdir(parents=True, exist_ok=True)
    url = settings.database_url or f"sqlite:///{results / 'study.db'}"
    return StudyService.open(study_file, url)


def main() -> None:
    import uvicorn

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    settings = load_settings()
    app, _ = build_app(settings)
    app.state.ctx.warm_up()
    log.info("serving on http://%s:%d", settings.server_name, settings.server_port)
    uvicorn.run(app, host=settings.server_name, port=settings.server_port, log_level="warning")
