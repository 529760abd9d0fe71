"""What one visitor may cost the Gradio side of the Space, checked before gradio sees a request.

Gradio reads a request's whole JSON body before it looks at it, and a file may also arrive
inside that body as a `data:` URL, which `max_upload_mb` (gradio's limit on uploads) does not
see: a 300 MB body was read, parsed and queued, stalling `/health` for a second. And every
event, model runs included, can be put in the queue by anyone: one client posting joins as fast
as it can keeps the `queue_size` places full, and visitors are told "Queue is full". So:

- a POST under /gradio_api/ larger than an upload may be (base64 of `max_upload_mb`, plus room
  for the rest of the request) is answered 413 as soon as its Content-Length says so, or, for a
  chunked body, as soon as that many bytes arrived;
- queue joins draw from a token bucket per client address (study.limits.client_address: the
  first X-Forwarded-For entry behind the Spaces proxy): settings client_queue_burst at once,
  then client_queue_per_minute, answered 429 with Retry-After beyond that. A person's page
  joins the queue once per model run (compress, then its trajectory; decode); light events
  (crops, study, results, admin) run outside the queue.
"""
from __future__ import annotations

import math

from study.limits import BodyTooLarge, Buckets, Rate, answer, client_address, header, read_body, replay

API_ROOT = "/gradio_api/"
JOIN_PATH = "/gradio_api/queue/join"
OVERHEAD_BYTES = 64 * 1024      # the request around a file: other inputs, ids, JSON
MAX_CLIENTS = 100_000           # buckets kept (the least recently used go first)


class GradioGuard:
    """ASGI middleware around the whole app; it looks only at POSTs under API_ROOT."""

    def __init__(self, app, *, max_upload_mb: float, joins_at_once: int, joins_per_minute: float,
                 trust_forwarded_for: bool = True):
        self.app = app
        self.max_body_bytes = math.ceil(max_upload_mb * 1e6 * 4 / 3) + OVERHEAD_BYTES
        self.joins = Buckets(Rate(joins_per_minute / 60, joins_at_once), MAX_CLIENTS)
        self.trust_forwarded_for = trust_forwarded_for

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] != "POST" or not scope["path"].startswith(API_ROOT):
            return await self.app(scope, receive, send)
        if scope["path"] == JOIN_PATH:
            wait = self.joins.take(client_address(scope, self.trust_forwarded_for))
            if wait:
                seconds = max(1, math.ceil(wait))
                return await answer(send, 429, f"Too many requests: please wait {seconds} s and try again.",
                                    [(b"retry-after", str(seconds).encode())])
        limit = self.max_body_bytes
        declared = header(scope, b"content-length")
        if declared is not None:    # uvicorn delivers no more than that: the body streams on to gradio
            if declared.isdigit() and int(declared) <= limit:
                return await self.app(scope, receive, send)
            return await self._too_large(send)
        try:                        # chunked: read up to the limit, then hand it on
            body = await read_body(scope, receive, limit)
        except BodyTooLarge:
            return await self._too_large(send)
        if body is None:
            return      # the client left
        return await self.app(scope, replay(body, receive), send)

    async def _too_large(self, send):
        # The rest of the body is never read: the connection cannot carry another request.
        await answer(send, 413, f"The request is larger than {self.max_body_bytes / 1e6:.1f} MB.",
                     [(b"connection", b"close")])
