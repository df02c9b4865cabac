"""core.conditions.check: HTTP/S3 read preconditions on (etag, last_modified)."""

from __future__ import annotations

import time
from email.utils import formatdate

import pytest

from atoll import errors
from atoll.core.conditions import ReadConditions, check, parse_http_date

ETAG = "5d41402abc4b2a76b9719d911017c592"
MODIFIED = 1_700_000_000.75  # stored with sub-second precision; HTTP dates have whole seconds
AT = formatdate(1_700_000_000, usegmt=True)  # what Last-Modified shows for it
BEFORE = formatdate(1_700_000_000 - 3600, usegmt=True)
AFTER = formatdate(1_700_000_000 + 3600, usegmt=True)


def outcome(**conditions) -> str:
    try:
        check(ReadConditions(**conditions), ETAG, MODIFIED)
    except errors.PreconditionFailed:
        return "412"
    except errors.NotModified:
        return "304"
    return "200"


@pytest.mark.parametrize("header, expected", [
    (f'"{ETAG}"', "200"), (ETAG, "200"), ("*", "200"), (f'"other", "{ETAG}"', "200"), (f'W/"{ETAG}"', "200"),
    ('"other"', "412"), ('"other", "more"', "412"), (f'"{ETAG[:-1]}"', "412"),
])
def test_if_match(header, expected):
    assert outcome(if_match=header) == expected


@pytest.mark.parametrize("header, expected", [
    (f'"{ETAG}"', "304"), ("*", "304"), (f'"x", "{ETAG}"', "304"), ('"other"', "200"), (f'"{ETAG}-2"', "200"),
])
def test_if_none_match(header, expected):
    assert outcome(if_none_match=header) == expected


@pytest.mark.parametrize("since, expected", [(BEFORE, "200"), (AT, "304"), (AFTER, "304")])
def test_if_modified_since(since, expected):
    assert outcome(if_modified_since=since) == expected


@pytest.mark.parametrize("since, expected", [(BEFORE, "412"), (AT, "200"), (AFTER, "200")])
def test_if_unmodified_since(since, expected):
    assert outcome(if_unmodified_since=since) == expected


def test_s3_precedence():
    # AWS GetObject docs: If-Match true and If-Unmodified-Since false -> 200 with the data.
    assert outcome(if_match=f'"{ETAG}"', if_unmodified_since=BEFORE) == "200"
    # AWS: If-None-Match false (the ETag matches) and If-Modified-Since true -> 304.
    assert outcome(if_none_match=f'"{ETAG}"', if_modified_since=BEFORE) == "304"
    # RFC 9110 13.2.2: If-Modified-Since is ignored when If-None-Match is present.
    assert outcome(if_none_match='"other"', if_modified_since=AFTER) == "200"
    # A failed If-Match is reported before anything If-None-Match says.
    assert outcome(if_match='"other"', if_none_match=f'"{ETAG}"') == "412"
    assert outcome(if_match=f'"{ETAG}"', if_none_match=f'"{ETAG}"') == "304"
    assert outcome(if_unmodified_since=BEFORE, if_modified_since=BEFORE) == "412"


def test_unparseable_dates_are_ignored():
    for bad in ["yesterday", "", "Mon, 99 Foo 2020 00:00:00 GMT", "2024-01-01T00:00:00Z"]:
        assert outcome(if_modified_since=bad) == "200"
        assert outcome(if_unmodified_since=bad) == "200"
    assert parse_http_date("garbage") is None


@pytest.fixture
def far_from_utc(monkeypatch):
    """Run in a local time zone other than UTC: HTTP dates must not depend on the server's zone."""
    monkeypatch.setenv("TZ", "America/New_York")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def test_http_date_formats(far_from_utc):
    # RFC 9110 allows IMF-fixdate, plus the obsolete RFC 850 and asctime forms (all three are GMT).
    assert parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT") == 784111777
    assert parse_http_date("Sunday, 06-Nov-94 08:49:37 GMT") == 784111777
    assert parse_http_date("Sun Nov  6 08:49:37 1994") == 784111777


def test_empty_conditions():
    assert ReadConditions().empty
    assert not ReadConditions(if_none_match="*").empty
    assert outcome() == "200"
