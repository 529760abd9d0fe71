"""What one client may cost the study API: body size, JSON shape and request rates.

`Guard` is ASGI middleware around the API's own application (study.http.build_api), so it
covers exactly the study routes and runs before anything is parsed:

- a body over `max_body_bytes` is answered 413 as soon as its Content-Length says so, or, for a
  chunked body, as soon as that many bytes arrived; the rest is never read;
- a body that fits is parsed once here (orjson, in C, recursion-limited) and refused unless its
  nesting and its number of values stay within `max_json_depth` / `max_json_values`, so
  neither the endpoint's validation nor the JSON columns see a pathological document;
- session starts, votes and events draw from token buckets (per session token, per client
  address; session starts also from one bucket for the whole server) and are answered 429 with
  Retry-After when one is empty.

The client address is the first entry of X-Forwarded-For when `trust_forwarded_for` is set
(the Spaces proxy puts the visitor's address there; the socket shows only the proxy), else
the socket's address. A client can forge that header when nothing in front of the server
overwrites it: then only the per-token buckets and the global start bucket hold, which still
bound what a client can write (every vote and event needs a session token, and tokens come from
session starts).
"""
from __future__ import annotations

import dataclasses
import math
import os
import re
import time
from collections import OrderedDict
from dataclasses import dataclass

import orjson

ENV_PREFIX = "STUDY_LIMIT_"
_SESSION_ROUTE = re.compile(r"^/sessions/(?P<token>[^/]{1,200})/(?P<what>votes|events)$")


@dataclass(frozen=True)
class Rate:
    """A token bucket: `burst` requests at once, refilled at `per_s` requests a second."""
    per_s: float
    burst: int


@dataclass(frozen=True)
class Limits:
    """The study API's limits; each can be overridden by the environment variable
    STUDY_LIMIT_<FIELD> (rates as "per_s/burst", e.g. STUDY_LIMIT_VOTE_PER_SESSION=3/10)."""
    max_body_bytes: int = 64 * 1024    # a vote or an event is under 3 KB
    max_json_depth: int = 6            # body -> client -> viewport -> number is 3
    max_json_values: int = 512         # every key, array item and scalar counts one
    rate_limits: bool = True           # off only for benchmarks that measure capacity
    trust_forwarded_for: bool = True   # the Space runs behind a proxy that sets X-Forwarded-For
    # A rater votes at most about once a second; a fast careless one clicks in 400 ms. A lab may
    # put 50 raters behind one address (NAT), each also reloading now and then.
    vote_per_session: Rate = Rate(3, 10)
    vote_per_address: Rate = Rate(100, 200)
    event_per_session: Rate = Rate(10, 60)
    event_per_address: Rate = Rate(200, 400)
    start_per_address: Rate = Rate(1, 60)
    start_overall: Rate = Rate(20, 200)   # holds even when forged addresses dodge the one above
    max_clients: int = 100_000            # buckets kept (least recently used go first)

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> "Limits":
        env = os.environ if env is None else env
        values = {}
        for f in dataclasses.fields(cls):
            raw = env.get(ENV_PREFIX + f.name.upper())
            if raw is None:
                continue
            try:
                if f.type == "Rate":
                    per_s, burst = raw.split("/")
                    values[f.name] = Rate(float(per_s), int(burst))
                elif f.type == "bool":
                    values[f.name] = {"1": True, "true": True, "0": False, "false": False}[raw.strip().lower()]
                else:
                    values[f.name] = int(raw)
            except (ValueError, KeyError):
                raise ValueError(f"${ENV_PREFIX}{f.name.upper()}={raw!r} is not a valid {f.type}") from None
        return cls(**values)


class Buckets:
    """Token buckets by key, at most `size` of them (the least recently used is dropped: a
    dropped bucket comes back full, so `size` must exceed the clients of a busy minute)."""

    def __init__(self, rate: Rate, size: int, clock=time.monotonic):
        self.rate, self.size, self.clock = rate, size, clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()   # key -> (tokens, at)

    def take(self, key: str) -> float:
        """Take one request from `key`'s bucket: 0 if it had one, else the seconds to wait."""
        now = self.clock()
        tokens, at = self._buckets.pop(key, (float(self.rate.burst), now))
        tokens = min(float(self.rate.burst), tokens + (now - at) * self.rate.per_s)
        wait = 0.0
        if tokens >= 1:
            tokens -= 1
        else:
            wait = (1 - tokens) / self.rate.per_s
        self._buckets[key] = (tokens, now)
        if len(self._buckets) > self.size:
            self._buckets.popitem(last=False)
        return wait


def json_shape_problem(body: bytes, max_depth: int, max_values: int) -> str | None:
    """Why a JSON body is refused, or None. An empty body is left to the endpoint."""
    if not body.strip():
        return None
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as e:    # orjson stops at 1024 levels of nesting
        return f"the body nests JSON deeper than {max_depth} levels" if "depth limit" in str(e) else \
            "the body is not valid JSON"
    stack, values = [(doc, 1)], 0
    while stack:
        value, depth = stack.pop()
        values += 1
        if values > max_values:
            return f"the body has more than {max_values} JSON values"
        if isinstance(value, dict | list):
            if depth > max_depth:
                return f"the body nests JSON deeper than {max_depth} levels"
            items = value.values() if isinstance(value, dict) else value
            values += len(value) if isinstance(value, dict) else 0   # keys count too
            stack.extend((v, depth + 1) for v in items)
    return None


class Guard:
    """ASGI middleware: the limits above, before the wrapped application sees a request."""

    def __init__(self, app, limits: Limits):
        self.app, self.limits = app, limits
        size = limits.max_clients
        self.buckets = {name: Buckets(getattr(limits, name), size) for name in
                        ("vote_per_session", "vote_per_address", "event_per_session", "event_per_address",
                         "start_per_address", "start_overall")}

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        if self.limits.rate_limits:
            wait = self._rate_limit(scope)
            if wait:
                seconds = max(1, math.ceil(wait))
                return await answer(send, 429, f"too many requests: retry in {seconds} s",
                                     [(b"retry-after", str(seconds).encode())])
        if scope["method"] not in ("POST", "PUT", "PATCH"):
            return await self.app(scope, receive, send)
        limit = self.limits.max_body_bytes
        try:
            body = await read_body(scope, receive, limit)
        except BodyTooLarge:
            return await too_large(send, limit)
        if body is None:
            return      # the client left
        problem = json_shape_problem(bytes(body), self.limits.max_json_depth, self.limits.max_json_values)
        if problem:
            return await answer(send, 422, problem)
        return await self.app(scope, replay(body, receive), send)

    def _rate_limit(self, scope) -> float:
        """Seconds until this request would be allowed; 0: it is, and it was counted."""
        if scope["method"] != "POST":
            return 0.0
        path = _route_path(scope)
        if path == "/sessions":
            names = (("start_per_address", client_address(scope, self.limits.trust_forwarded_for)),
                     ("start_overall", ""))
        elif m := _SESSION_ROUTE.match(path):
            what = "vote" if m["what"] == "votes" else "event"
            names = ((f"{what}_per_session", m["token"]),
                     (f"{what}_per_address", client_address(scope, self.limits.trust_forwarded_for)))
        else:
            return 0.0
        # Narrowest first; a refused request is not charged to the wider buckets, so a client
        # that its own bucket stops cannot drain its address's or the server's.
        for name, key in names:
            wait = self.buckets[name].take(key)
            if wait:
                return wait
        return 0.0


class BodyTooLarge(Exception):
    """The request's body is, or says it is, over the limit."""


async def read_body(scope, receive, limit: int) -> bytes | None:
    """The whole body of an ASGI request, read no further than `limit` bytes (BodyTooLarge past
    that, or at once when Content-Length says so); None when the client leaves first."""
    declared = header(scope, b"content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > limit):
        raise BodyTooLarge
    body = bytearray()
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        body += message.get("body", b"")
        if len(body) > limit:
            raise BodyTooLarge
        if not message.get("more_body"):
            return bytes(body)


def replay(body: bytes, receive):
    """An ASGI `receive` that hands the application the body read already, then the client's
    next message (its disconnect, when it comes)."""
    replayed = False

    async def receive_again():
        nonlocal replayed
        if replayed:
            return await receive()
        replayed = True
        return {"type": "http.request", "body": body, "more_body": False}
    return receive_again


def _route_path(scope) -> str:
    """The path below the application's mount point."""
    path, root = scope["path"], scope.get("root_path", "")
    return path[len(root):] if root and path.startswith(root) else path


def header(scope, name: bytes) -> str | None:
    """The value of request header `name` (lower-case bytes), or None."""
    for key, value in scope["headers"]:
        if key == name:
            return value.decode("latin-1").strip()
    return None


def client_address(scope, trust_forwarded_for: bool) -> str:
    """The first X-Forwarded-For entry (behind a proxy that sets it), else the socket's address."""
    if trust_forwarded_for:
        forwarded = header(scope, b"x-forwarded-for")
        if forwarded:
            return forwarded.split(",")[0].strip()[:64]
    client = scope.get("client")
    return client[0] if client else ""


async def too_large(send, limit: int):
    # The rest of the body is never read: the connection cannot carry another request.
    await answer(send, 413, f"the body is larger than {limit // 1024} KB", [(b"connection", b"close")])


async def answer(send, status: int, detail: str, headers: list | None = None):
    body = orjson.dumps({"detail": detail})
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            *(headers or [])]})
    await send({"type": "http.response.body", "body": body})
