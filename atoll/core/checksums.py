"""Object checksums: MD5 for ETags, and the S3 additional checksums (CRC32, CRC32C, CRC64NVME, SHA1, SHA256).

CRCs use awscrt (CRC32C/CRC64NVME at ~30 GB/s, GIL released) or zlib; hashes use hashlib (GIL released on large
buffers), so every hasher can run on a worker thread beside the event loop. Values travel as base64 of the
big-endian digest, as S3 sends them.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import zlib

from awscrt import checksums as _crt

ALGORITHMS = ("crc32", "crc32c", "crc64nvme", "sha1", "sha256")
_CRC_WIDTH = {"crc32": 4, "crc32c": 4, "crc64nvme": 8}


class _Crc:
    __slots__ = ("_fn", "_value", "_width")

    def __init__(self, fn, width: int) -> None:
        self._fn = fn
        self._value = 0
        self._width = width

    def update(self, data) -> None:
        self._value = self._fn(data, self._value)

    def digest(self) -> bytes:
        return self._value.to_bytes(self._width, "big")


def _zlib_crc32(data, value: int) -> int:
    return zlib.crc32(data, value)


def new_hasher(algorithm: str):
    """A hasher with ``update(bytes)`` and ``digest() -> bytes`` for one of ALGORITHMS or "md5"."""
    if algorithm == "md5":
        return hashlib.md5()
    if algorithm == "sha1":
        return hashlib.sha1()
    if algorithm == "sha256":
        return hashlib.sha256()
    if algorithm == "crc32":
        return _Crc(_zlib_crc32, 4)
    if algorithm == "crc32c":
        return _Crc(lambda d, v: _crt.crc32c(bytes(d) if isinstance(d, memoryview) else d, v), 4)
    if algorithm == "crc64nvme":
        return _Crc(lambda d, v: _crt.crc64nvme(bytes(d) if isinstance(d, memoryview) else d, v), 8)
    raise ValueError(f"unknown checksum algorithm {algorithm!r}")


def b64(digest: bytes) -> str:
    return base64.b64encode(digest).decode("ascii")


def decode_b64(value: str, algorithm: str) -> bytes | None:
    """The digest bytes of a base64 checksum value, or None if it is not valid for the algorithm."""
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return None
    expected = {"md5": 16, "sha1": 20, "sha256": 32, **_CRC_WIDTH}.get(algorithm)
    return raw if len(raw) == expected else None


def composite(algorithm: str, part_values: list[str]) -> str:
    """S3's COMPOSITE multipart checksum: the checksum of the concatenated binary part checksums, then "-N"."""
    hasher = new_hasher(algorithm)
    for value in part_values:
        hasher.update(base64.b64decode(value))
    return f"{b64(hasher.digest())}-{len(part_values)}"


def combine_full_object(algorithm: str, parts: list[tuple[str, int]]) -> str:
    """S3's FULL_OBJECT multipart checksum for CRCs: combine per-part CRCs (base64, length) into the CRC of the
    whole object without reading it."""
    combine = {"crc32": _crt.combine_crc32, "crc32c": _crt.combine_crc32c,
               "crc64nvme": _crt.combine_crc64nvme}[algorithm]
    width = _CRC_WIDTH[algorithm]
    total = None
    for value, length in parts:
        crc = int.from_bytes(base64.b64decode(value), "big")
        total = crc if total is None else combine(total, crc, length)
    return b64((total or 0).to_bytes(width, "big"))


def multipart_etag(part_md5_hexes: list[str]) -> str:
    md5 = hashlib.md5()
    for hexdigest in part_md5_hexes:
        md5.update(bytes.fromhex(hexdigest))
    return f"{md5.hexdigest()}-{len(part_md5_hexes)}"


def azure_crc64(crc64nvme_digest: bytes) -> str:
    """The x-ms-content-crc64 form of a CRC-64/NVME digest. Azure Storage's CRC-64 is the same function (reflected
    polynomial 0x9A6C9329AC4BC9B5, init and xorout all ones), but Azure sends the value little-endian where S3's
    x-amz-checksum-crc64nvme is big-endian."""
    return base64.b64encode(crc64nvme_digest[::-1]).decode()
