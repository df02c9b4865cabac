"""Pins through the admin API (#10): keep the objects under a prefix warm (never evicted), for a while or until
unpinned; the same operation as ``atoll pin`` (atoll.core.tiering.admin.pin_prefix).

    POST   /api/v1/buckets/{bucket}/pins          {prefix, seconds?}   seconds absent or null: until unpinned
    DELETE /api/v1/buckets/{bucket}/pins?prefix=P                       unpin

Both answer ``{"bucket", "prefix", "objects", "bytes", "until"}``: the objects (and their bytes) the change applied
to, and when their pin ends (epoch seconds; ``null``: until unpinned; ``0``: unpinned). ``prefix`` is required
("" is the whole bucket, spelled out so that a forgotten field never pins or unpins a whole bucket). Objects not
warm yet keep the pin for when they are.
"""

from __future__ import annotations

import math
import re
import time
from typing import Awaitable, Callable
from urllib.parse import parse_qs

from atoll.admin.jsonapi import ApiError, bad_field, json_body, json_response, string_field, unknown_fields
from atoll.core.tiering import admin
from atoll.core.tiering.jobs import PIN_FOREVER
from atoll.core.tiering.tier import Tiering
from atoll.http.server import Request, Response

Handler = Callable[[Request, dict], Awaitable[Response]]

MAX_PIN_SECONDS = 100 * 365 * 86400.0  # longer than this: pin until unpinned
MAX_PREFIX = 1024  # S3 keys are at most 1024 bytes


def _prefix(value: str | None) -> str:
    if value is None:
        raise ApiError(400, "MissingField", "'prefix' is required (\"\" for the whole bucket).")
    if len(value.encode("utf-8", "surrogatepass")) > MAX_PREFIX or "\x00" in value:
        raise bad_field("prefix", f"a key prefix of at most {MAX_PREFIX} bytes, without NUL")
    return value


def _answer(bucket: str, prefix: str, counts: tuple[int, int], until: float | None) -> Response:
    objects, size = counts
    return json_response(200, {"bucket": bucket, "prefix": prefix, "objects": objects, "bytes": size,
                               "until": until})


class PinApi:
    def __init__(self, tier: Tiering) -> None:
        self.tier = tier

    def routes(self) -> list[tuple[re.Pattern, str, dict[str, Handler]]]:
        return [(re.compile(r"/api/v1/buckets/(?P<bucket>[^/]+)/pins"), "pins",
                 {"POST": self.pin, "DELETE": self.unpin})]

    async def pin(self, request: Request, params: dict) -> Response:
        body = await json_body(request)
        unknown_fields(body, ("prefix", "seconds"))
        prefix = _prefix(string_field(body, "prefix"))
        seconds = body.get("seconds")
        if seconds is not None and (isinstance(seconds, bool) or not isinstance(seconds, (int, float))
                                    or not math.isfinite(seconds) or not 0 < seconds <= MAX_PIN_SECONDS):
            raise bad_field("seconds", f"a number of seconds above 0 and at most {MAX_PIN_SECONDS:g}, or null "
                                       "(until unpinned)")
        until = PIN_FOREVER if seconds is None else time.time() + float(seconds)
        counts = await admin.pin_prefix(self.tier, params["bucket"], prefix, until)
        return _answer(params["bucket"], prefix, counts, None if seconds is None else round(until, 3))

    async def unpin(self, request: Request, params: dict) -> Response:
        query = parse_qs(request.raw_query, keep_blank_values=True)
        unknown = sorted(set(query) - {"prefix"})
        if unknown:
            raise ApiError(400, "InvalidArgument", f"Unknown query parameter {unknown[0][:64]!r}; expected prefix.")
        prefix = _prefix(query["prefix"][-1] if "prefix" in query else None)
        counts = await admin.pin_prefix(self.tier, params["bucket"], prefix, 0.0)
        return _answer(params["bucket"], prefix, counts, 0)
