"""The admin API's JSON conventions: answers, errors, and checked fields of request bodies.

Every client mistake is an ``ApiError`` (a 4xx with ``{"error": {"code", "message"}}``); no message echoes a
value that could be a secret.
"""

from __future__ import annotations

import json
import math
from typing import Any

from atoll.http.server import BodyTooLarge, Request, Response

MAX_BODY = 64 << 10
# Where a body already read (to check a SigV4 signature over it) waits for the handler.
BODY_STATE = "admin_body"
# Where the parsed JSON body stays for the audit log (atoll.admin.audit picks the fields it may record).
PARSED_BODY_STATE = "admin_json"

class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, headers: list[tuple[str, str]] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or []


def json_response(status: int, body: Any, headers: list[tuple[str, str]] | None = None) -> Response:
    data = json.dumps(body, separators=(",", ":")).encode()
    return Response(status=status, body=data, headers=[("Content-Type", "application/json"),
                                                       ("Cache-Control", "no-store"), *(headers or [])])


def error_response(status: int, code: str, message: str, headers: list[tuple[str, str]] | None = None) -> Response:
    return json_response(status, {"error": {"code": code, "message": message}}, headers)


# request bodies ---------------------------------------------------------------------------------------------
async def json_body(request: Request, limit: int = MAX_BODY, required: bool = True) -> dict:
    raw = request.state.pop(BODY_STATE, None)
    try:
        if raw is None:
            raw = await request.read_body(limit)
        elif len(raw) > limit:
            raise BodyTooLarge()
    except BodyTooLarge:
        raise ApiError(413, "BodyTooLarge", f"The request body exceeds {limit} bytes.") from None
    if not raw.strip():
        if required:
            raise ApiError(400, "MissingBody", "This request needs a JSON object body.")
        return {}
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise ApiError(400, "InvalidJSON", "The request body is not valid JSON.") from None
    if not isinstance(body, dict):
        raise ApiError(400, "InvalidJSON", "The request body must be a JSON object.")
    request.state[PARSED_BODY_STATE] = body
    return body


def bad_field(name: str, expected: str) -> ApiError:
    return ApiError(400, "InvalidArgument", f"{name!r} must be {expected}.")


def string_field(body: dict, name: str, default: str | None = None, required: bool = False) -> str | None:
    value = body.get(name, default)
    if value is None:
        if required:
            raise ApiError(400, "MissingField", f"{name!r} is required.")
        return None
    if not isinstance(value, str):
        raise bad_field(name, "a string")
    return value


def boolean_field(body: dict, name: str, default: bool) -> bool:
    value = body.get(name, default)
    if not isinstance(value, bool):
        raise bad_field(name, "true or false")
    return value


def number_field(body: dict, name: str) -> float | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise bad_field(name, "a positive number")
    return float(value)


def strings_field(body: dict, name: str) -> list[str] | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise bad_field(name, "a list of strings")
    return value


def string_map_field(body: dict, name: str) -> dict[str, str]:
    value = body.get(name, {})
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(k, str) and k.strip() and isinstance(v, str)
                                              for k, v in value.items()):
        raise bad_field(name, "an object of string values")
    return {k.strip().lower(): v for k, v in value.items()}


def unknown_fields(body: dict, allowed: tuple[str, ...]) -> None:
    unknown = sorted(set(body) - set(allowed))
    if unknown:
        names = ", ".join(repr(u[:64]) for u in unknown[:5])
        raise ApiError(400, "UnknownField", f"Unknown field(s) {names}; expected {', '.join(allowed)}.")

