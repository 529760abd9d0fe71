"""Turn the codec's and the study's own errors into messages the visitor sees in the page.

`ImageError`, `BitstreamError` (both ValueError subclasses with human messages) and
`BackboneUnavailable` become `gr.Error`, which gradio shows as a toast and returns to API clients;
anything else is a bug, logged with its traceback and reported without internals.
"""

from __future__ import annotations

import functools
import logging

import gradio as gr

log = logging.getLogger(__name__)


def friendly_errors(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from codec.backbone import BackboneUnavailable
        from codec.bitstream import BitstreamError
        from codec.images import ImageError

        try:
            return fn(*args, **kwargs)
        except gr.Error:
            raise
        except (ImageError, BitstreamError, BackboneUnavailable) as exc:
            raise gr.Error(str(exc), print_exception=False) from None
        except MemoryError:
            raise gr.Error("Not enough memory for this image; try a smaller one.") from None
        except Exception:
            log.exception("%s failed", fn.__name__)
            raise gr.Error(f"Internal error in {fn.__name__}; it has been logged.") from None

    return wrapper
