"""atoll.s3.objects.parse_range: the Range header of GetObject, as S3 interprets it ([start, end) results)."""

from __future__ import annotations

import pytest

from atoll import errors
from atoll.s3.objects import parse_range


@pytest.mark.parametrize("header, size, expected", [
    ("bytes=0-0", 10, (0, 1)),
    ("bytes=0-9", 10, (0, 10)),
    ("bytes=2-5", 10, (2, 6)),
    ("bytes=9-9", 10, (9, 10)),
    ("bytes=5-", 10, (5, 10)),
    ("bytes=0-", 10, (0, 10)),
    ("bytes=3-1000", 10, (3, 10)),  # the end is clamped
    ("bytes=-3", 10, (7, 10)),
    ("bytes=-10", 10, (0, 10)),
    ("bytes=-1000", 10, (0, 10)),  # a suffix longer than the object is the whole object
    ("bytes=0-8388607", 5, (0, 5)),  # s3transfer's no-HEAD first part on a small object
    (" bytes=1-2 ", 10, (1, 3)),
    ("bytes= 1 - 2", 10, (1, 3)),
])
def test_satisfiable(header, size, expected):
    assert parse_range(header, size) == expected


@pytest.mark.parametrize("header, size", [
    ("bytes=10-", 10), ("bytes=10-20", 10), ("bytes=100-200", 10),
    ("bytes=0-", 0), ("bytes=0-0", 0), ("bytes=-1", 0), ("bytes=-5", 0),  # any range on an empty object
    ("bytes=-0", 10),
])
def test_unsatisfiable(header, size):
    with pytest.raises(errors.InvalidRange) as exc:
        parse_range(header, size)
    assert exc.value.detail["size"] == size  # the 416 answer carries Content-Range: bytes */size


@pytest.mark.parametrize("header", [
    None, "", "bytes=", "bytes=-", "bytes=a-b", "bytes=5-2", "items=0-5", "bytes 0-5", "bytes=0-1,3-4",
    "bytes=0-1, 5-", "bytes=1.5-2", "bytes=+1-2", "BYTES=0-1x", "bytes=\u00b2-", "bytes=-\u00b3", "bytes=1_0-20",
])
def test_malformed_or_multiple_ranges_mean_the_whole_object(header):
    assert parse_range(header, 10) is None
