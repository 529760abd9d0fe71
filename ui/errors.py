"""Turn the codec's and the study's own errors into messages the visitor sees in the page.

`ImageError`, `BitstreamError` (both ValueError subclasses with human messages),
`BackboneUnavailable` and the model process's `WorkerError` become `gr.Error`, which gradio shows
as a toast and returns to API clients; anything else is a bug, logged with its traceback and
reported without internals. No message shows a filesystem path (`without_paths`): the
codec's messages name files for the command line, where the files are the user's own.
"""

from __future__ import annotations

import functools
import logging
import re

import gradio as gr

log = logging.getLogger(__name__)

# An absolute or home-relative path: "/" or "~/" not preceded by a word character, a dot or a
# colon (so "owner/model" hub ids, "1/2" and "https://host/..." URLs are left alone).
_PATH = re.compile(r"(?<![\w.:/~-])~?/[^\s'\"()\[\],;]*[^\s'\"()\[\],;.]")  # a final "." ends the sentence


def without_paths(text: str) -> str:
    """`text` with every filesystem path replaced by "<path>"."""
    return _PATH.sub("<path>", text)


def friendly_errors(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from codec.core.backbone import BackboneUnavailable
        from codec.core.bitstream import BitstreamError
        from codec.core.images import ImageError
        from codec.core.isolated import WorkerError

        try:
            return fn(*args, **kwargs)
        except gr.Error:
            raise
        except (ImageError, BitstreamError, BackboneUnavailable, WorkerError) as exc:
            raise gr.Error(without_paths(str(exc)), print_exception=False) from None
        except MemoryError:
            raise gr.Error("Not enough memory for this image; try a smaller one.") from None
        except Exception:
            log.exception("%s failed", fn.__name__)
            raise gr.Error(f"Internal error in {fn.__name__}; it has been logged.") from None

    return wrapper
