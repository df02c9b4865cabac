"""Incremental decoder for ``Content-Encoding: aws-chunked`` request bodies, with chunk and trailer signatures.

Contract
--------
Feed the body *after* HTTP-level de-chunking (``Transfer-Encoding: chunked`` already removed), split however it
arrived, then call ``finish()`` at the end of the HTTP body::

    decoder = AwsChunkedDecoder(auth, trailer_expected=..., decoded_length=...)
    for piece in body:
        for data in decoder.feed(piece):
            sink.write(data)            # bytes or memoryview
    trailers = decoder.finish()         # {"x-amz-checksum-crc32": "base64", ...}

Every failure is a ``ChunkedError`` carrying an S3 error code; nothing else escapes ``feed`` or ``finish``:

* ``IncompleteBody``: the body ended before the final chunk (and its trailer), or decoded to fewer bytes than
  ``decoded_length``;
* ``InvalidRequest``: malformed framing (size not hex, missing CRLF, a line over 4 KiB, a chunk over
  ``max_chunk``, bytes after the end), or more decoded bytes than ``decoded_length``;
* ``SignatureDoesNotMatch``: a chunk or trailer signature is wrong or missing in a signed stream;
* ``MalformedTrailerError``: a trailer line is not ``name:value``, or trailers are missing although expected
  or present although not expected.

Wire format (AWS ``sigv4-streaming`` / ``sigv4-streaming-trailers``)::

    hex(size)[;chunk-signature=<64 hex>]\\r\\n <size bytes> \\r\\n      ... repeated
    0[;chunk-signature=<64 hex>]\\r\\n                                  final chunk
    name:value\\r\\n ...  [x-amz-trailer-signature:<64 hex>\\r\\n]        trailer, optional
    \\r\\n                                                             end

Tolerated variants, because clients differ: a missing final empty line at end of body (and a last trailer line
without its CRLF), and one empty line between the final chunk and the trailer (MinIO's clients send it).

Signatures: when ``auth.payload_mode`` is ``streaming-signed`` or ``streaming-signed-trailer`` every chunk needs
``chunk-signature`` = HMAC(signing key, ``AWS4-HMAC-SHA256-PAYLOAD\\n<amz_date>\\n<scope>\\n<previous
signature>\\n<sha256("")>\\n<sha256(chunk data)>``), chained from the request's seed signature; in
``streaming-signed-trailer`` a trailer needs ``x-amz-trailer-signature`` = HMAC(signing key,
``AWS4-HMAC-SHA256-TRAILER\\n<amz_date>\\n<scope>\\n<final chunk signature>\\n<sha256(trailer)>``), where the
trailer is each header other than the signature as ``name:value\\n``. In signed streams a chunk's data is
returned only once its signature has verified, so a caller never sees unauthenticated bytes; unsigned streams
return data as it arrives. Either way, the body is trustworthy only after ``finish()`` returns (trailing
checksums are the caller's to verify against the trailers returned).

Efficiency: data is returned as memoryview slices of the fed buffers (no copy) whenever a chunk's bytes are
available in one ``feed``; only the part of a signed chunk that straddles ``feed`` calls is copied, once. If you
feed a mutable buffer, consume the returned pieces before you reuse it.
"""

from __future__ import annotations

import hashlib
import hmac

from atoll.auth.sigv4 import EMPTY_SHA256, AuthContext, hmac_sha256_hex

__all__ = ["AwsChunkedDecoder", "ChunkedError", "MAX_LINE"]

MAX_LINE = 4096  # longest chunk-header or trailer line accepted, CRLF included
_MAX_TRAILER_LINES = 64
_SIGNATURE_EXTENSION = b"chunk-signature="
_TRAILER_SIGNATURE = "x-amz-trailer-signature"
_HEX_DIGITS = frozenset(b"0123456789abcdefABCDEF")
_TOKEN_CHARS = frozenset(b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")

# Decoder states.
_CHUNK_HEADER, _CHUNK_DATA, _CHUNK_END, _TRAILER, _DONE, _FAILED = range(6)


class ChunkedError(Exception):
    """The aws-chunked body is malformed, truncated or forged. ``code`` is the S3 error code to answer with."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class AwsChunkedDecoder:
    """Decode one aws-chunked body incrementally; see the module docstring for the contract."""

    def __init__(self, auth: AuthContext | None, *, trailer_expected: bool, decoded_length: int | None,
                 max_chunk: int = 16 * 2**20) -> None:
        self._trailer_expected = trailer_expected
        self._decoded_length = decoded_length
        self._max_chunk = max_chunk
        mode = auth.payload_mode if auth is not None else "unsigned"
        self._signed_chunks = mode in ("streaming-signed", "streaming-signed-trailer")
        self._signed_trailer = mode == "streaming-signed-trailer"
        if self._signed_chunks:
            self._sign = hmac_sha256_hex(auth.signing_key)
            # Everything in a chunk's string to sign up to the previous signature is fixed for the request.
            self._chunk_prefix = f"AWS4-HMAC-SHA256-PAYLOAD\n{auth.amz_date}\n{auth.scope}\n".encode()
            self._trailer_prefix = f"AWS4-HMAC-SHA256-TRAILER\n{auth.amz_date}\n{auth.scope}\n".encode()
            self._previous_signature = auth.seed_signature.encode("ascii", "replace")
        self._state = _CHUNK_HEADER
        self._error: ChunkedError | None = None
        self._line = bytearray()  # a header or trailer line that straddles feed() calls
        self._remaining = 0  # bytes of the current chunk's data still to come
        self._chunk_end_seen = 0  # how many bytes of the CRLF after the chunk data have arrived
        self._chunk_signature = b""
        self._chunk_hash = None
        self._held = bytearray()  # the straddling part of a signed chunk, held until the chunk verifies
        self._declared_total = 0  # payload bytes announced by the chunk headers so far
        self._trailer_lines: list[tuple[str, str]] = []
        self._blank_before_trailer = False
        self._at_end_of_body = False  # finish() was called
        self._trailers: dict[str, str] | None = None

    def feed(self, data: bytes | bytearray | memoryview) -> list[bytes | memoryview]:
        """Consume the next piece of the body; return the payload pieces it completed (possibly none)."""
        if self._error is not None:
            raise self._error
        view = memoryview(data)  # outside the try: a non-buffer argument is the caller's bug, not the client's
        try:
            if view.ndim != 1 or view.itemsize != 1:
                view = view.cast("B")
            return self._feed(view)
        except ChunkedError as error:
            self._fail(error)
        except Exception as error:  # a bug must still surface as a clean S3 error, never as a crash
            self._fail(ChunkedError("InvalidRequest", f"malformed aws-chunked body ({type(error).__name__})"))

    def finish(self) -> dict[str, str]:
        """Declare the end of the body; return the trailing headers (lower-case names), all checks done."""
        if self._error is not None:
            raise self._error
        try:
            if self._state == _TRAILER:
                if self._line:  # a last trailer line without its CRLF, at end of body
                    line = bytes(self._line)
                    self._line.clear()
                    if line.endswith(b"\r"):
                        line = line[:-1]
                    if line:
                        self._add_trailer_line(self._checked_line(line))
                self._at_end_of_body = True
                self._complete()
            if self._state != _DONE:
                raise ChunkedError("IncompleteBody", "the request body ended before the final aws-chunked chunk")
            return dict(self._trailers or {})
        except ChunkedError as error:
            self._fail(error)
        except Exception as error:  # as in feed(): never anything but a ChunkedError
            self._fail(ChunkedError("InvalidRequest", f"malformed aws-chunked body ({type(error).__name__})"))

    # --- internals ----------------------------------------------------------------------------------------------

    def _fail(self, error: ChunkedError):
        self._error = error
        self._state = _FAILED
        raise error

    def _feed(self, view: memoryview) -> list[bytes | memoryview]:
        out: list[bytes | memoryview] = []
        position, end = 0, len(view)
        while position < end:
            state = self._state
            if state == _CHUNK_DATA:
                take = min(self._remaining, end - position)
                piece = view[position:position + take]
                position += take
                self._remaining -= take
                if self._signed_chunks:
                    self._chunk_hash.update(piece)
                    if self._remaining:
                        self._held += piece  # must outlive this call, and must not be released unverified
                    else:
                        self._verify_chunk()
                        if self._held:
                            out.append(memoryview(self._held))
                            self._held = bytearray()
                        if take:
                            out.append(piece)
                elif take:
                    out.append(piece)
                if not self._remaining:
                    self._state = _CHUNK_END
            elif state == _CHUNK_END:
                # The CRLF after the chunk data, possibly split across calls.
                while self._chunk_end_seen < 2 and position < end:
                    if view[position] != b"\r\n"[self._chunk_end_seen]:
                        raise ChunkedError("InvalidRequest", "aws-chunked chunk data is not followed by CRLF")
                    self._chunk_end_seen += 1
                    position += 1
                if self._chunk_end_seen == 2:
                    self._chunk_end_seen = 0
                    self._state = _CHUNK_HEADER
            elif state == _CHUNK_HEADER or state == _TRAILER:
                line, position = self._read_line(view, position, end)
                if line is None:
                    break
                if state == _CHUNK_HEADER:
                    self._start_chunk(line)
                else:
                    self._trailer_line(line)
            else:  # _DONE
                raise ChunkedError("InvalidRequest", "data after the end of the aws-chunked body")
        return out

    def _read_line(self, view: memoryview, position: int, end: int) -> tuple[bytes | None, int]:
        """The next CRLF-terminated line (without CRLF) and the position after it, or (None, end) when the line
        continues in a later call. Only a window of at most MAX_LINE bytes is ever copied."""
        window_end = min(end, position + MAX_LINE + 1 - len(self._line))
        window = view[position:window_end].tobytes()
        if self._line and self._line[-1] == 0x0D and window[:1] == b"\n":  # CRLF split across calls
            line = bytes(self._line[:-1])
            self._line.clear()
            return self._checked_line(line), position + 1
        index = window.find(b"\r\n")
        if index >= 0:
            if self._line:
                line = bytes(self._line) + window[:index]
                self._line.clear()
            else:
                line = window[:index]
            return self._checked_line(line), position + index + 2
        self._line += window
        if len(self._line) >= MAX_LINE:
            raise ChunkedError("InvalidRequest", f"aws-chunked line longer than {MAX_LINE} bytes")
        return None, end

    @staticmethod
    def _checked_line(line: bytes) -> bytes:
        if len(line) + 2 > MAX_LINE:
            raise ChunkedError("InvalidRequest", f"aws-chunked line longer than {MAX_LINE} bytes")
        if b"\r" in line or b"\n" in line:
            raise ChunkedError("InvalidRequest", "aws-chunked line holds a bare CR or LF")
        return line

    def _start_chunk(self, line: bytes) -> None:
        size_text, _, extensions = line.partition(b";")
        size_text = size_text.strip(b" \t")
        if not size_text or len(size_text) > 16 or not _HEX_DIGITS.issuperset(size_text):
            raise ChunkedError("InvalidRequest", "aws-chunked chunk size is not a hexadecimal number")
        size = int(size_text, 16)
        if size > self._max_chunk:
            raise ChunkedError("InvalidRequest",
                               f"aws-chunked chunk of {size} bytes exceeds the limit of {self._max_chunk} bytes")
        if self._decoded_length is not None and self._declared_total + size > self._decoded_length:
            raise ChunkedError("InvalidRequest", "the aws-chunked body is longer than x-amz-decoded-content-length")
        self._declared_total += size
        if self._signed_chunks:
            signature = b""
            for extension in extensions.split(b";"):
                extension = extension.strip(b" \t")
                if extension.startswith(_SIGNATURE_EXTENSION):
                    signature = extension[len(_SIGNATURE_EXTENSION):]
            if len(signature) != 64:
                raise ChunkedError("SignatureDoesNotMatch", "aws-chunked chunk-signature is missing or malformed")
            self._chunk_signature = signature
            self._chunk_hash = hashlib.sha256()
        if size:
            self._remaining = size
            self._state = _CHUNK_DATA
            return
        # The final, empty chunk.
        if self._signed_chunks:
            self._verify_chunk()
        if self._decoded_length is not None and self._declared_total != self._decoded_length:
            raise ChunkedError("IncompleteBody", f"the aws-chunked body decoded to {self._declared_total} bytes, but "
                               f"x-amz-decoded-content-length is {self._decoded_length}")
        self._state = _TRAILER

    def _verify_chunk(self) -> None:
        string_to_sign = b"%s%s\n%s\n%s" % (self._chunk_prefix, self._previous_signature, EMPTY_SHA256.encode(),
                                            self._chunk_hash.hexdigest().encode())
        expected = self._sign(string_to_sign).encode()
        if not hmac.compare_digest(expected, self._chunk_signature.lower()):
            raise ChunkedError("SignatureDoesNotMatch", "an aws-chunked chunk-signature does not match")
        self._previous_signature = expected

    def _trailer_line(self, line: bytes) -> None:
        if line:
            self._add_trailer_line(line)
        elif not self._trailer_lines and self._trailer_expected and not self._blank_before_trailer:
            # One empty line between the final chunk and the trailer (MinIO's clients); if the body ends here
            # instead, finish() reports the missing trailer.
            self._blank_before_trailer = True
        else:
            self._complete()

    def _add_trailer_line(self, line: bytes) -> None:
        if len(self._trailer_lines) >= _MAX_TRAILER_LINES:
            raise ChunkedError("MalformedTrailerError", "too many aws-chunked trailer lines")
        name, colon, value = line.partition(b":")
        name = name.strip(b" \t")
        if not colon or not name or not _TOKEN_CHARS.issuperset(name):
            raise ChunkedError("MalformedTrailerError", "an aws-chunked trailer line is not name:value")
        # latin-1 cannot fail, and maps back to the exact bytes when the trailer is hashed for its signature.
        self._trailer_lines.append((name.decode("latin-1").lower(), value.strip(b" \t").decode("latin-1")))

    def _complete(self) -> None:
        """The body ended: check the trailer against what was declared and, when signed, its signature."""
        signature = None
        trailers: dict[str, str] = {}
        for name, value in self._trailer_lines:
            if name == _TRAILER_SIGNATURE:
                if signature is not None:
                    raise ChunkedError("MalformedTrailerError", "more than one x-amz-trailer-signature")
                signature = value
            else:
                trailers[name] = f"{trailers[name]},{value}" if name in trailers else value
        if self._trailer_expected and not trailers:
            if self._at_end_of_body and not self._trailer_lines and not self._blank_before_trailer:
                # Nothing at all after the final chunk: the body was cut short before its trailer.
                raise ChunkedError("IncompleteBody", "the request body ended before the aws-chunked trailer")
            raise ChunkedError("MalformedTrailerError", "the aws-chunked body has no trailer, but x-amz-trailer "
                               "declared one")
        if not self._trailer_expected and self._trailer_lines:
            raise ChunkedError("MalformedTrailerError", "the aws-chunked body has a trailer, but no x-amz-trailer "
                               "header declared one")
        if self._signed_trailer and self._trailer_lines:
            if signature is None:
                raise ChunkedError("SignatureDoesNotMatch", "the aws-chunked trailer has no x-amz-trailer-signature")
            self._verify_trailer(signature)
        self._trailers = trailers
        self._state = _DONE

    def _verify_trailer(self, signature: str) -> None:
        """AWS hashes each trailing header as ``name:value\\n``. Clients agree on that for the single checksum
        header they send; for several, the order as sent is tried first, then sorted by name."""
        lines = [(name, value) for name, value in self._trailer_lines if name != _TRAILER_SIGNATURE]
        provided = signature.lower().encode("latin-1")
        orders = [lines]
        if sorted(lines) != lines:
            orders.append(sorted(lines))
        for order in orders:
            canonical = "".join(f"{name}:{value}\n" for name, value in order).encode("latin-1")
            string_to_sign = b"%s%s\n%s" % (self._trailer_prefix, self._previous_signature,
                                            hashlib.sha256(canonical).hexdigest().encode())
            if hmac.compare_digest(self._sign(string_to_sign).encode(), provided):
                return
        raise ChunkedError("SignatureDoesNotMatch", "the aws-chunked x-amz-trailer-signature does not match")
