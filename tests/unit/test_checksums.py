"""core.checksums: known answers, and multipart combinations checked against computing over the whole data."""

from __future__ import annotations

import base64
import hashlib
import os
import zlib

import pytest

from atoll.core import checksums as cks

CHECK = b"123456789"  # the standard CRC "check" input


def value(algorithm: str, data: bytes, pieces: int = 1) -> bytes:
    hasher = cks.new_hasher(algorithm)
    step = max(1, -(-len(data) // pieces))
    for i in range(0, len(data), step):
        chunk = data[i:i + step]
        hasher.update(memoryview(chunk) if i % 2 else chunk)  # memoryviews arrive from the socket layer
    return hasher.digest()


@pytest.mark.parametrize("algorithm, expected", [
    ("crc32", 0xCBF43926),
    ("crc32c", 0xE3069283),
    ("crc64nvme", 0xAE8B14860A799888),
])
def test_crc_check_values(algorithm, expected):
    width = 8 if algorithm == "crc64nvme" else 4
    assert value(algorithm, CHECK) == expected.to_bytes(width, "big")
    assert value(algorithm, CHECK, pieces=4) == expected.to_bytes(width, "big")


def test_known_base64_values_as_s3_sends_them():
    # Values S3 documents / returns for well-known inputs.
    assert cks.b64(value("crc32", b"")) == "AAAAAA=="
    assert cks.b64(value("crc32c", b"")) == "AAAAAA=="
    assert cks.b64(value("crc64nvme", b"")) == "AAAAAAAAAAA="
    assert cks.b64(value("crc32", b"hello")) == base64.b64encode(zlib.crc32(b"hello").to_bytes(4, "big")).decode()
    assert cks.b64(value("sha256", b"")) == "47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU="
    assert cks.b64(value("sha1", b"abc")) == "qZk+NkcGgWq6PiVxeFDCbJzQ2J0="
    assert value("md5", b"hello").hex() == "5d41402abc4b2a76b9719d911017c592"


def test_streaming_equals_one_shot():
    data = os.urandom(3 << 20)
    for algorithm in (*cks.ALGORITHMS, "md5"):
        assert value(algorithm, data, pieces=7) == value(algorithm, data), algorithm


def test_unknown_algorithm():
    with pytest.raises(ValueError):
        cks.new_hasher("crc16")


def test_decode_b64_checks_width():
    assert cks.decode_b64("AAAAAA==", "crc32") == b"\0\0\0\0"
    assert cks.decode_b64("AAAAAA==", "crc64nvme") is None
    assert cks.decode_b64("AAAAAAAAAAA=", "crc64nvme") == b"\0" * 8
    assert cks.decode_b64("not base64!", "crc32") is None
    assert cks.decode_b64("AAAA", "sha256") is None


PARTS = [os.urandom(n) for n in (5 << 20, 5 << 20, 1234, 1)]


@pytest.mark.parametrize("algorithm", cks.ALGORITHMS)
def test_composite_is_the_checksum_of_the_part_checksums(algorithm):
    part_values = [cks.b64(value(algorithm, p)) for p in PARTS]
    concatenated = b"".join(value(algorithm, p) for p in PARTS)
    expected = f"{cks.b64(value(algorithm, concatenated))}-{len(PARTS)}"
    assert cks.composite(algorithm, part_values) == expected


@pytest.mark.parametrize("algorithm", ["crc32", "crc32c", "crc64nvme"])
def test_full_object_combine_equals_the_crc_of_the_whole(algorithm):
    whole = b"".join(PARTS)
    parts = [(cks.b64(value(algorithm, p)), len(p)) for p in PARTS]
    assert cks.combine_full_object(algorithm, parts) == cks.b64(value(algorithm, whole))
    assert cks.combine_full_object(algorithm, parts[:1]) == cks.b64(value(algorithm, PARTS[0]))
    # An empty part in the middle changes nothing.
    with_empty = [parts[0], (cks.b64(value(algorithm, b"")), 0), *parts[1:]]
    assert cks.combine_full_object(algorithm, with_empty) == cks.b64(value(algorithm, whole))


def test_multipart_etag():
    md5s = [hashlib.md5(p).hexdigest() for p in PARTS]
    expected = hashlib.md5(b"".join(hashlib.md5(p).digest() for p in PARTS)).hexdigest() + "-4"
    assert cks.multipart_etag(md5s) == expected
    # A one-part upload still gets the "-1" form, unlike a plain PUT of the same bytes.
    assert cks.multipart_etag(md5s[:1]) == hashlib.md5(hashlib.md5(PARTS[0]).digest()).hexdigest() + "-1"
