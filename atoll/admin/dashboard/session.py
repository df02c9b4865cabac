"""Dashboard sign-in: stateless session cookies, their CSRF values, and a limit on failed sign-ins.

A session is the cookie ``atoll_session`` = ``v1.<payload>.<mac>``: the payload (base64url JSON) names the actor
(an operator's access key id, or ``admin-token``), when the session ends, a nonce, and a fingerprint of the
operator's secret key; the MAC is HMAC-SHA256 under a key derived from the admin token. Nothing is stored on the
server: rotating the admin token ends every session, changing an operator's secret key (or deleting the key, or
taking away its operator rights: checked by the caller on every request) ends that operator's.

The CSRF value of a session is an HMAC of the cookie itself, so it changes with every sign-in and cannot be
derived without the key. Pages carry it in ``<meta name="atoll-csrf">``; a POST, PUT, PATCH or DELETE
authenticated by the cookie must send it back in ``X-Atoll-CSRF`` (a cross-site form can set neither the header
nor, with ``SameSite=Strict``, the cookie).

The cookie is ``HttpOnly; SameSite=Strict; Path=/``. It is not ``Secure``: the admin port speaks plain HTTP
(keep it on a loopback or management network, or put a TLS proxy in front, which should add ``Secure``).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import secrets
import time
from collections import deque
from dataclasses import dataclass

COOKIE = "atoll_session"
CSRF_HEADER = "x-atoll-csrf"
TOKEN_ACTOR = "admin-token"
_VERSION = "v1"
_MAX_COOKIE = 4096


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass(frozen=True, slots=True)
class Session:
    actor: str  # an operator's access key id, or TOKEN_ACTOR
    expires: float
    fingerprint: str  # of the operator's secret key when the session began ("" for the token)
    cookie: str  # the cookie's value, from which the CSRF value is derived


class SessionKeys:
    """Issues and checks session cookies under keys derived from the admin token."""

    def __init__(self, admin_token: str) -> None:
        root = admin_token.encode("utf-8")
        self._mac_key = hmac.new(root, b"atoll dashboard session v1", hashlib.sha256).digest()
        self._csrf_key = hmac.new(root, b"atoll dashboard csrf v1", hashlib.sha256).digest()

    def fingerprint(self, secret_key: str) -> str:
        """A short keyed digest of an operator's secret key: a new secret key ends the sessions of the old."""
        return _b64(hmac.new(self._mac_key, b"secret\0" + secret_key.encode("utf-8"), hashlib.sha256).digest()[:12])

    def issue(self, actor: str, ttl: float, fingerprint: str = "", now: float | None = None) -> Session:
        now = time.time() if now is None else now
        expires = int(now + ttl)
        payload = _b64(json.dumps({"a": actor, "e": expires, "k": fingerprint, "n": secrets.token_hex(8)},
                                  separators=(",", ":")).encode("utf-8"))
        body = f"{_VERSION}.{payload}"
        cookie = f"{body}.{self._mac(body)}"
        return Session(actor, float(expires), fingerprint, cookie)

    def verify(self, cookie: str | None, now: float | None = None) -> Session | None:
        """The session ``cookie`` carries, or None if it is malformed, forged or expired."""
        if not cookie or len(cookie) > _MAX_COOKIE:
            return None
        version, _, rest = cookie.partition(".")
        payload, _, mac = rest.partition(".")
        if version != _VERSION or not payload or not mac:
            return None
        if not hmac.compare_digest(mac.encode("ascii", "replace"), self._mac(f"{version}.{payload}").encode()):
            return None
        try:
            fields = json.loads(_unb64(payload))
            actor, expires, fingerprint = fields["a"], fields["e"], fields["k"]
        except (binascii.Error, ValueError, TypeError, KeyError):
            return None
        if not isinstance(actor, str) or not isinstance(fingerprint, str) or not isinstance(expires, int):
            return None
        if expires <= (time.time() if now is None else now):
            return None
        return Session(actor, float(expires), fingerprint, cookie)

    def csrf(self, session: Session) -> str:
        return _b64(hmac.new(self._csrf_key, session.cookie.encode("ascii"), hashlib.sha256).digest()[:24])

    def csrf_matches(self, session: Session, given: str | None) -> bool:
        return given is not None and hmac.compare_digest(given.encode("utf-8", "replace"),
                                                         self.csrf(session).encode("ascii"))

    def _mac(self, body: str) -> str:
        return _b64(hmac.new(self._mac_key, body.encode("ascii"), hashlib.sha256).digest())


def cookie_from(header: str | None) -> str | None:
    """The value of ``atoll_session`` in a ``Cookie`` header (the last one, if a client sends two)."""
    found = None
    for part in (header or "").split(";"):
        name, eq, value = part.strip().partition("=")
        if eq and name == COOKIE:
            found = value.strip().strip('"')
    return found


def set_cookie(session: Session, ttl: float) -> str:
    return f"{COOKIE}={session.cookie}; Max-Age={int(ttl)}; Path=/; HttpOnly; SameSite=Strict"


def clear_cookie() -> str:
    return f"{COOKIE}=; Max-Age=0; Path=/; HttpOnly; SameSite=Strict"


class LoginLimiter:
    """At most ``failures`` failed sign-ins per remote address within ``window`` seconds; in memory, bounded
    (the oldest addresses are forgotten beyond ``max_addresses``)."""

    def __init__(self, failures: int = 10, window: float = 300.0, max_addresses: int = 4096) -> None:
        self.failures = failures
        self.window = window
        self.max_addresses = max_addresses
        self._seen: dict[str, deque[float]] = {}

    def _recent(self, address: str, now: float) -> deque[float] | None:
        times = self._seen.get(address)
        if times is None:
            return None
        while times and times[0] <= now - self.window:
            times.popleft()
        if not times:
            del self._seen[address]
            return None
        return times

    def retry_after(self, address: str, now: float | None = None) -> float:
        """Seconds until ``address`` may try again (0: now)."""
        now = time.monotonic() if now is None else now
        times = self._recent(address, now)
        if times is None or len(times) < self.failures:
            return 0.0
        return max(times[0] + self.window - now, 0.0)

    def failed(self, address: str, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        times = self._recent(address, now)
        if times is None:
            if len(self._seen) >= self.max_addresses:
                del self._seen[next(iter(self._seen))]
            times = self._seen[address] = deque(maxlen=self.failures)
        times.append(now)

    def succeeded(self, address: str) -> None:
        self._seen.pop(address, None)
