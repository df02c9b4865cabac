"""Request bodies of PutObject and UploadPart: framing (plain, aws-chunked with or without signatures and
trailers) and integrity (Content-MD5, x-amz-content-sha256, x-amz-checksum-* in a header or a trailer).

``body_source`` returns the decoded byte stream, the digests the core must compute while storing it, and a
verifier the core calls once the whole body is staged and before it is committed — so a body whose declared
checksum does not match is never visible, and the trailer checksum (which arrives after the data) is honoured.
"""

from __future__ import annotations

import base64
import binascii
from typing import AsyncIterator

from atoll.auth.chunked import AwsChunkedDecoder, ChunkedError
from atoll.core import checksums as cks
from atoll.core.namespace import Verifier
from atoll.s3.context import S3Context
from atoll.s3.errors import S3Error
from atoll.s3.numbers import is_ascii_digits

_STREAMING = ("streaming-signed", "streaming-signed-trailer", "streaming-unsigned-trailer")
_ALG_NAMES = {"CRC32": "crc32", "CRC32C": "crc32c", "CRC64NVME": "crc64nvme", "SHA1": "sha1", "SHA256": "sha256"}
DEFAULT_ALGORITHM = "crc64nvme"  # what S3 computes when the client sends no checksum


def checksum_algorithm(value: str | None) -> str:
    """Map an x-amz-checksum-algorithm / x-amz-sdk-checksum-algorithm value to ours ("" if absent)."""
    if not value:
        return ""
    alg = _ALG_NAMES.get(value.strip().upper())
    if alg is None:
        raise S3Error("InvalidRequest", f"Checksum algorithm {value[:32]!r} is not supported.")
    return alg


def _declared_checksum_headers(headers: dict[str, str]) -> dict[str, str]:
    found = {}
    for alg in cks.ALGORITHMS:
        value = headers.get(f"x-amz-checksum-{alg}")
        if value is not None:
            if cks.decode_b64(value.strip(), alg) is None:
                raise S3Error("InvalidRequest", f"Value for x-amz-checksum-{alg} header is invalid.")
            found[alg] = value.strip()
    if len(found) > 1:
        raise S3Error("InvalidRequest", "Expecting a single x-amz-checksum- header. Multiple checksum Types are "
                                        "not allowed.")
    return found


def body_source(ctx: S3Context) -> tuple[AsyncIterator[bytes], set[str], Verifier]:
    headers = ctx.headers
    http = ctx.http
    mode = ctx.auth.payload_mode if ctx.auth is not None else "unsigned"
    chunked_transfer = "chunked" in headers.get("transfer-encoding", "").lower()
    if http.content_length is None and not chunked_transfer:
        raise S3Error("MissingContentLength", "You must provide the Content-Length HTTP header.", status=411)

    declared = _declared_checksum_headers(headers)
    algorithms: set[str] = set(declared)
    content_md5 = headers.get("content-md5")
    expected_md5: bytes | None = None
    if content_md5 is not None:
        try:
            expected_md5 = base64.b64decode(content_md5.strip(), validate=True)
        except (binascii.Error, ValueError):
            expected_md5 = None
        if expected_md5 is None or len(expected_md5) != 16:
            raise S3Error("InvalidDigest", "The Content-MD5 you specified was invalid.")

    trailer_alg = ""
    trailer_name = headers.get("x-amz-trailer", "").strip().lower()
    if trailer_name:
        if not trailer_name.startswith("x-amz-checksum-") or trailer_name[15:] not in cks.ALGORITHMS:
            raise S3Error("InvalidRequest", f"The trailer {trailer_name[:64]} is not supported.")
        trailer_alg = trailer_name[15:]
        algorithms.add(trailer_alg)
    if not algorithms:
        algorithms.add(DEFAULT_ALGORITHM)
    if mode == "sha256":
        algorithms.add("sha256")

    trailers: dict[str, str] = {}
    decoded_length: int | None = None
    if mode in _STREAMING:
        # The payload mode alone says the body is aws-chunked: some SDKs omit Content-Encoding: aws-chunked.
        raw = headers.get("x-amz-decoded-content-length")
        if raw is None or not is_ascii_digits(raw):
            raise S3Error("MissingContentLength", "You must provide the x-amz-decoded-content-length header.",
                          status=411)
        decoded_length = int(raw)
        decoder = AwsChunkedDecoder(ctx.auth, trailer_expected=mode.endswith("trailer"), decoded_length=decoded_length)
        body = _decode(http.body_chunks(), decoder, trailers)
    else:
        body = http.body_chunks()

    def verify(digests: dict[str, bytes], size: int) -> dict[str, str]:
        if decoded_length is not None and size != decoded_length:
            raise S3Error("IncompleteBody", "You did not provide the number of bytes specified by the "
                                            "x-amz-decoded-content-length header.")
        if mode == "sha256" and digests["sha256"].hex() != ctx.auth.payload_sha256:
            raise S3Error("XAmzContentSHA256Mismatch", "The provided 'x-amz-content-sha256' header does not "
                                                       "match what was computed.")
        if expected_md5 is not None and digests["md5"] != expected_md5:
            raise S3Error("BadDigest", "The Content-MD5 you specified did not match what we received.")
        claims = dict(declared)
        if trailer_alg:
            value = trailers.get(trailer_name)
            if value is None:
                raise S3Error("InvalidRequest", f"The trailer {trailer_name} was declared but not sent.")
            if cks.decode_b64(value.strip(), trailer_alg) is None:
                raise S3Error("InvalidRequest", f"Value for {trailer_name} trailing header is invalid.")
            claims[trailer_alg] = value.strip()
        for alg, value in claims.items():
            if cks.b64(digests[alg]) != value:
                raise S3Error("BadDigest", f"The {alg.upper()} you specified did not match the calculated "
                                           "checksum.")
        stored = {alg: cks.b64(digests[alg]) for alg in claims}
        if not stored:
            stored[DEFAULT_ALGORITHM] = cks.b64(digests[DEFAULT_ALGORITHM])
        return stored

    return body, algorithms, verify


def declared_size(ctx: S3Context) -> int | None:
    """The length of the body a request announces (for early quota admission), once ``body_source`` accepted it:
    x-amz-decoded-content-length of an aws-chunked body, else Content-Length; None when unknown."""
    mode = ctx.auth.payload_mode if ctx.auth is not None else "unsigned"
    if mode in _STREAMING:
        return int(ctx.headers["x-amz-decoded-content-length"])
    if "chunked" in ctx.headers.get("transfer-encoding", "").lower():
        return None
    return ctx.http.content_length


async def _decode(chunks: AsyncIterator[bytes], decoder: AwsChunkedDecoder,
                  trailers: dict[str, str]) -> AsyncIterator[bytes]:
    try:
        async for chunk in chunks:
            pieces = decoder.feed(chunk)
            if pieces:
                yield pieces[0] if len(pieces) == 1 else b"".join(pieces)
        trailers.update(decoder.finish())
    except ChunkedError as exc:
        raise S3Error(exc.code, exc.message) from None
