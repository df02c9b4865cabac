"""Dashboard sessions (atoll.admin.dashboard.session): signed cookies, expiry, tampering, CSRF values, the cookie
header, and the limit on failed sign-ins."""

from __future__ import annotations

import base64
import json

from atoll.admin.dashboard.session import (COOKIE, TOKEN_ACTOR, LoginLimiter, SessionKeys, clear_cookie,
                                           cookie_from, set_cookie)

TOKEN = "t" * 32


def _payload(cookie: str) -> dict:
    text = cookie.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))


def _with_payload(cookie: str, payload: dict) -> str:
    version, _, mac = cookie.split(".")
    body = base64.urlsafe_b64encode(json.dumps(payload).encode()).rstrip(b"=").decode()
    return f"{version}.{body}.{mac}"


def test_a_cookie_verifies_until_it_expires():
    keys = SessionKeys(TOKEN)
    session = keys.issue("AKOPS", ttl=60, fingerprint="fp", now=1000.0)
    found = keys.verify(session.cookie, now=1059.0)
    assert found is not None and (found.actor, found.fingerprint, found.expires) == ("AKOPS", "fp", 1060.0)
    assert keys.verify(session.cookie, now=1060.0) is None
    assert keys.verify(session.cookie, now=5000.0) is None


def test_each_sign_in_is_a_new_cookie():
    keys = SessionKeys(TOKEN)
    first, second = keys.issue(TOKEN_ACTOR, 60, now=1000.0), keys.issue(TOKEN_ACTOR, 60, now=1000.0)
    assert first.cookie != second.cookie
    assert keys.csrf(first) != keys.csrf(second)


def test_a_tampered_cookie_is_refused():
    keys = SessionKeys(TOKEN)
    cookie = keys.issue("AKOPS", 60, now=1000.0).cookie
    payload = _payload(cookie)
    assert keys.verify(_with_payload(cookie, {**payload, "a": "AKROOT"}), now=1001.0) is None
    assert keys.verify(_with_payload(cookie, {**payload, "e": payload["e"] + 10**6}), now=1001.0) is None
    version, body, mac = cookie.split(".")
    flipped = mac[:-1] + ("A" if mac[-1] != "A" else "B")
    for bad in (f"{version}.{body}.{flipped}", f"v2.{body}.{mac}", f"{version}.{body}", "", "garbage",
                f"{version}.{body}.{mac}x", "v1..", "v1.!!!.abc", cookie + "." + mac, "x" * 5000):
        assert keys.verify(bad, now=1001.0) is None, bad
    assert keys.verify(None) is None


def test_a_cookie_of_another_token_is_refused():
    cookie = SessionKeys(TOKEN).issue("AKOPS", 60, now=1000.0).cookie
    assert SessionKeys("u" * 32).verify(cookie, now=1001.0) is None


def test_a_validly_signed_but_malformed_payload_is_refused():
    keys = SessionKeys(TOKEN)
    for payload in ({"a": 5, "e": 2000, "k": ""}, {"a": "x", "e": "2000", "k": ""}, {"a": "x", "e": 2000},
                    [1, 2], {"a": "x", "e": 2000.5, "k": ""}):
        body = "v1." + base64.urlsafe_b64encode(json.dumps(payload).encode()).rstrip(b"=").decode()
        assert keys.verify(f"{body}.{keys._mac(body)}", now=1000.0) is None, payload


def test_csrf_values_belong_to_their_session():
    keys = SessionKeys(TOKEN)
    session = keys.issue("AKOPS", 60)
    other = keys.issue("AKOPS", 60)
    value = keys.csrf(session)
    assert keys.csrf_matches(session, value)
    assert not keys.csrf_matches(session, keys.csrf(other))
    assert not keys.csrf_matches(session, None)
    assert not keys.csrf_matches(session, "")
    assert not keys.csrf_matches(session, value[:-1])
    assert not keys.csrf_matches(session, value + "é")
    assert SessionKeys("u" * 32).csrf(session) != value


def test_fingerprints_follow_the_secret_key():
    keys = SessionKeys(TOKEN)
    assert keys.fingerprint("secret-1") == keys.fingerprint("secret-1")
    assert keys.fingerprint("secret-1") != keys.fingerprint("secret-2")
    assert "secret-1" not in keys.fingerprint("secret-1")


def test_cookie_headers():
    session = SessionKeys(TOKEN).issue("AKOPS", 600)
    header = set_cookie(session, 600)
    assert header.startswith(f"{COOKIE}={session.cookie};")
    attributes = {part.strip() for part in header.split(";")[1:]}
    assert attributes == {"Max-Age=600", "Path=/", "HttpOnly", "SameSite=Strict"}
    assert "Max-Age=0" in clear_cookie() and "HttpOnly" in clear_cookie()
    assert cookie_from(f"theme=dark; {COOKIE}={session.cookie}; other=1") == session.cookie
    assert cookie_from(f'{COOKIE}="{session.cookie}"') == session.cookie
    assert cookie_from(f"{COOKIE}=old; {COOKIE}=new") == "new"
    assert cookie_from("theme=dark") is None and cookie_from(None) is None and cookie_from("") is None


def test_the_login_limiter_counts_failures_per_address_within_its_window():
    limiter = LoginLimiter(failures=3, window=60.0)
    for second in range(3):
        assert limiter.retry_after("10.0.0.1", now=100.0 + second) == 0.0
        limiter.failed("10.0.0.1", now=100.0 + second)
    assert limiter.retry_after("10.0.0.1", now=103.0) == 57.0  # the first failure leaves the window at 160
    assert limiter.retry_after("10.0.0.2", now=103.0) == 0.0  # another address is not held back
    assert limiter.retry_after("10.0.0.1", now=160.5) == 0.0
    limiter.failed("10.0.0.1", now=161.0)
    assert limiter.retry_after("10.0.0.1", now=161.0) == 0.0  # two failures left in the window, plus this one
    limiter.succeeded("10.0.0.1")
    assert limiter.retry_after("10.0.0.1", now=161.0) == 0.0


def test_the_login_limiter_stays_bounded():
    limiter = LoginLimiter(failures=2, window=60.0, max_addresses=100)
    for n in range(1000):
        limiter.failed(f"10.0.{n // 256}.{n % 256}", now=100.0)
    assert len(limiter._seen) <= 100
    limiter.failed("10.9.9.9", now=100.0)
    limiter.failed("10.9.9.9", now=100.0)
    assert limiter.retry_after("10.9.9.9", now=100.0) == 60.0
