"""The admin API's bearer token: ATOLL_ADMIN_TOKEN if set, else one generated at first start and kept in
``<data_dir>/admin-token`` (mode 0600), which the CLI reads to talk to a local server."""

from __future__ import annotations

import hmac
import os
import secrets

from atoll.config import Config

ADMIN_TOKEN_FILE = "admin-token"
TOKEN_ENV = "ATOLL_ADMIN_TOKEN"
MIN_TOKEN_LENGTH = 16


class TokenError(Exception):
    """The configured token is unusable; the message says why."""


def token_path(config: Config) -> str:
    return os.path.join(config.data_dir, ADMIN_TOKEN_FILE)


def _from_env() -> str | None:
    value = os.environ.get(TOKEN_ENV, "").strip()
    return value or None


def read_token(config: Config) -> str | None:
    """The token a client should send: the environment's, else the stored one, else None."""
    env = _from_env()
    if env:
        return env
    try:
        with open(token_path(config), encoding="utf-8") as f:
            return f.read().strip() or None
    except OSError:
        return None


def ensure_token(config: Config) -> tuple[str, bool]:
    """(token, generated): the environment's token, the stored one, or a new one written with mode 0600."""
    env = _from_env()
    if env:
        if len(env) < MIN_TOKEN_LENGTH:
            raise TokenError(f"{TOKEN_ENV} must have at least {MIN_TOKEN_LENGTH} characters")
        return env, False
    stored = read_token(config)
    if stored:
        return stored, False
    token = secrets.token_urlsafe(32)
    fd = os.open(token_path(config), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(token + "\n")
        f.flush()
        os.fsync(f.fileno())
    return token, True


def token_matches(expected: str, authorization: str | None) -> bool:
    """Whether an ``Authorization`` header carries ``expected`` as a bearer token, compared in constant time."""
    if not authorization:
        return False
    scheme, _, given = authorization.strip().partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(given.strip().encode("utf-8", "replace"), expected.encode("utf-8"))
