"""The aws-chunked decoder (atoll.auth.chunked) against AWS's published examples, botocore's own aws-chunked
encoder, a real boto3 upload, and an independent reference encoder written here from the AWS specification.

Throughput (``test_large_body_is_decoded_without_copying`` prints fresh figures; shared 2-core dev container):
32 MiB in 64 KiB chunks fed as 1 MiB pieces decodes at ~7-14 GB/s unsigned (zero-copy memoryview slices) and
~1 GB/s signed (bounded by SHA-256 of every chunk, which hashlib computes with the GIL released).
"""

from __future__ import annotations

import base64
import calendar
import hashlib
import hmac
import io
import random
import time
import zlib

import boto3
import pytest
from botocore.config import Config
from botocore.httpchecksum import AwsChunkedWrapper, Crc32Checksum, CrtCrc32cChecksum, CrtCrc64NvmeChecksum, \
    Sha256Checksum

from atoll.auth.chunked import MAX_LINE, AwsChunkedDecoder, ChunkedError
from atoll.auth.sigv4 import AuthContext, clear_caches, verify_request

# --- AWS's worked examples (sigv4-streaming.html, sigv4-streaming-trailers.html) -------------------------------

AWS_KEY, AWS_SECRET = "AKIAIOSFODNN7EXAMPLE", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
AWS_DATE, AWS_SCOPE = "20130524T000000Z", "20130524/us-east-1/s3/aws4_request"
AWS_NOW = calendar.timegm((2013, 5, 24, 0, 0, 0))
AWS_PAYLOAD = b"a" * 66560


def aws_example_headers(trailer: bool) -> dict[str, str]:
    headers = {"host": "s3.amazonaws.com", "x-amz-date": AWS_DATE, "x-amz-storage-class": "REDUCED_REDUNDANCY",
               "content-encoding": "aws-chunked", "x-amz-decoded-content-length": "66560"}
    if trailer:
        headers |= {
            "x-amz-content-sha256": "STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER",
            "x-amz-trailer": "x-amz-checksum-crc32c",
            "authorization": f"AWS4-HMAC-SHA256 Credential={AWS_KEY}/{AWS_SCOPE},SignedHeaders=content-encoding;"
                             "host;x-amz-content-sha256;x-amz-date;x-amz-decoded-content-length;x-amz-storage-class;"
                             "x-amz-trailer,Signature=106e2a8a18243abcf37539882f36619c00e2dfc72633413f02d3b74544bfeb8e"}
    else:
        headers |= {
            "x-amz-content-sha256": "STREAMING-AWS4-HMAC-SHA256-PAYLOAD", "content-length": "66824",
            "authorization": f"AWS4-HMAC-SHA256 Credential={AWS_KEY}/{AWS_SCOPE},SignedHeaders=content-encoding;"
                             "content-length;host;x-amz-content-sha256;x-amz-date;x-amz-decoded-content-length;"
                             "x-amz-storage-class,"
                             "Signature=4f232c4386841ef735655705268965c44a0e4690baa4adea153f7db9fa80a0a9"}
    return headers


AWS_SIGNED_BODY = (
    b"10000;chunk-signature=ad80c730a21e5b8d04586a2213dd63b9a0e99e0e2307b0ade35a65485a288648\r\n"
    + b"a" * 65536 + b"\r\n"
    b"400;chunk-signature=0055627c9e194cb4542bae2aa5492e3c1575bbb81b612b7d234b86a503ef5497\r\n"
    + b"a" * 1024 + b"\r\n"
    b"0;chunk-signature=b6c6ea8a5354eaf15b3cb7646744f4275b71ea724fed81ceb9323e279d449df9\r\n"
    b"\r\n")

AWS_TRAILER_BODY = (
    b"10000;chunk-signature=b474d8862b1487a5145d686f57f013e54db672cee1c953b3010fb58501ef5aa2\r\n"
    + b"a" * 65536 + b"\r\n"
    b"400;chunk-signature=1c1344b170168f8e65b41376b44b20fe354e373826ccbbe2c1d40a8cae51e5c7\r\n"
    + b"a" * 1024 + b"\r\n"
    b"0;chunk-signature=2ca2aba2005185cf7159c6277faf83795951dd77a3a99e6e65d5c9f85863f992\r\n"
    b"x-amz-checksum-crc32c:sOO8/Q==\r\n"
    b"x-amz-trailer-signature:d81f82fc3505edab99d459891051a732e8730629a2e4a59689829ca17fe2e435\r\n"
    b"\r\n")


@pytest.fixture(autouse=True)
def _fresh_caches():
    clear_caches()


def aws_example_context(trailer: bool) -> AuthContext:
    """The seed comes from verifying the documented request itself: a known answer for sigv4 too."""
    context = verify_request("PUT", "/examplebucket/chunkObject.txt", "", aws_example_headers(trailer),
                             {AWS_KEY: AWS_SECRET}.get, AWS_NOW)
    assert context.payload_mode == ("streaming-signed-trailer" if trailer else "streaming-signed")
    return context


# --- an independent reference encoder, straight from the AWS specification ------------------------------------

def reference_signing_key(secret: str, date: str, region: str) -> bytes:
    key = ("AWS4" + secret).encode()
    for part in (date, region, "s3", "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    return key


def reference_context(payload_mode: str = "streaming-signed", seed: str = "f" * 64) -> AuthContext:
    return AuthContext(access_key=AWS_KEY, payload_mode=payload_mode, payload_sha256=None,
                       signing_key=reference_signing_key(AWS_SECRET, "20130524", "us-east-1"),
                       seed_signature=seed, amz_date=AWS_DATE, scope=AWS_SCOPE, presigned=False)


def reference_signed_body(payload: bytes, chunk_size: int, context: AuthContext, trailers=(),
                          blank_before_trailer: bool = False, final_crlf: bool = True) -> bytes:
    """aws-chunked with chunk signatures (and a signed trailer when ``trailers`` is given), as AWS documents."""
    def sign(string_to_sign: str) -> str:
        return hmac.new(context.signing_key, string_to_sign.encode(), hashlib.sha256).hexdigest()

    previous = context.seed_signature
    body = bytearray()
    pieces = [payload[i:i + chunk_size] for i in range(0, len(payload), chunk_size)] + [b""]
    for data in pieces:
        previous = sign("\n".join(["AWS4-HMAC-SHA256-PAYLOAD", context.amz_date, context.scope, previous,
                                   hashlib.sha256(b"").hexdigest(), hashlib.sha256(data).hexdigest()]))
        body += b"%x;chunk-signature=%s\r\n" % (len(data), previous.encode())
        if data:
            body += data + b"\r\n"
    if trailers:
        if blank_before_trailer:
            body += b"\r\n"
        canonical = "".join(f"{name}:{value}\n" for name, value in trailers)
        signature = sign("\n".join(["AWS4-HMAC-SHA256-TRAILER", context.amz_date, context.scope, previous,
                                    hashlib.sha256(canonical.encode()).hexdigest()]))
        for name, value in trailers:
            body += f"{name}:{value}\r\n".encode()
        body += f"x-amz-trailer-signature:{signature}\r\n".encode()
    if final_crlf:
        body += b"\r\n"
    return bytes(body)


def crc32_b64(data: bytes) -> str:
    return base64.b64encode(zlib.crc32(data).to_bytes(4, "big")).decode()


def decode(body: bytes, context: AuthContext | None, split: int | None = None,
           **options) -> tuple[bytes, dict[str, str]]:
    """Feed ``body`` in pieces of ``split`` bytes (all at once when None); return (payload, trailers)."""
    step = split or max(len(body), 1)
    return decode_pieces([body[i:i + step] for i in range(0, len(body), step)], context, **options)


def random_splits(body: bytes, rng: random.Random) -> list[bytes]:
    cuts = sorted(rng.sample(range(1, len(body)), min(len(body) - 1, rng.randint(0, 40)))) if len(body) > 1 else []
    return [body[a:b] for a, b in zip([0, *cuts], [*cuts, len(body)])]


def decode_pieces(pieces, context, **options) -> tuple[bytes, dict[str, str]]:
    options.setdefault("trailer_expected", False)
    options.setdefault("decoded_length", None)
    decoder = AwsChunkedDecoder(context, **options)
    out = bytearray()
    for piece in pieces:
        for data in decoder.feed(piece):
            out += data
    return bytes(out), decoder.finish()


# --- known answers ----------------------------------------------------------------------------------------------

def test_reference_encoder_reproduces_the_aws_examples():
    assert reference_signed_body(AWS_PAYLOAD, 65536, aws_example_context(False)) == AWS_SIGNED_BODY
    assert len(AWS_SIGNED_BODY) == 66824  # the documented Content-Length
    assert reference_signed_body(AWS_PAYLOAD, 65536, aws_example_context(True),
                                 trailers=[("x-amz-checksum-crc32c", "sOO8/Q==")]) == AWS_TRAILER_BODY


@pytest.mark.parametrize("split", [None, 1, 7, 65536 + 90, 1 << 20])
def test_aws_signed_example_decodes(split):
    payload, trailers = decode(AWS_SIGNED_BODY, aws_example_context(False), split, decoded_length=66560)
    assert payload == AWS_PAYLOAD and trailers == {}


@pytest.mark.parametrize("split", [None, 1, 13, 65536 + 90])
def test_aws_signed_trailer_example_decodes(split):
    payload, trailers = decode(AWS_TRAILER_BODY, aws_example_context(True), split, trailer_expected=True,
                               decoded_length=66560)
    assert payload == AWS_PAYLOAD and trailers == {"x-amz-checksum-crc32c": "sOO8/Q=="}


def test_aws_examples_reject_tampering():
    context = aws_example_context(False)
    tamperings = [
        (b"ad80c730", b"ad80c731"),  # chunk 1's signature
        (b"b6c6ea8a", b"b6c6ea8b"),  # the final chunk's signature
        (b"aaaa\r\n400;", b"aaab\r\n400;"),  # the last byte of chunk 1's data
    ]
    for old, new in tamperings:
        with pytest.raises(ChunkedError) as caught:
            decode(AWS_SIGNED_BODY.replace(old, new, 1), context)
        assert caught.value.code == "SignatureDoesNotMatch"
    with pytest.raises(ChunkedError, match="SignatureDoesNotMatch"):
        decode(AWS_TRAILER_BODY.replace(b"sOO8/Q==", b"AAAAAA=="), aws_example_context(True), trailer_expected=True)


# --- botocore and real clients ----------------------------------------------------------------------------------

@pytest.mark.parametrize("checksum_cls, name", [(Crc32Checksum, "x-amz-checksum-crc32"),
                                                (CrtCrc32cChecksum, "x-amz-checksum-crc32c"),
                                                (CrtCrc64NvmeChecksum, "x-amz-checksum-crc64nvme"),
                                                (Sha256Checksum, "x-amz-checksum-sha256")])
@pytest.mark.parametrize("size", [0, 1, 1023, 1024, 5000, 3 * 2**20 + 7])
def test_botocore_unsigned_trailer_bodies(checksum_cls, name, size):
    rng = random.Random(size)
    payload = rng.randbytes(size)
    wrapper = AwsChunkedWrapper(io.BytesIO(payload), checksum_cls=checksum_cls, checksum_name=name,
                                chunk_size=1024)
    body = wrapper.read()
    expected = checksum_cls()
    expected.update(payload)
    context = reference_context("streaming-unsigned-trailer")
    for pieces in ([body], random_splits(body, rng)):
        decoded, trailers = decode_pieces(pieces, context, trailer_expected=True, decoded_length=size)
        assert decoded == payload and trailers == {name: expected.b64digest()}
    assert decode_pieces([body], None, trailer_expected=True, decoded_length=size)[0] == payload


def test_botocore_aws_chunked_without_checksum():
    body = AwsChunkedWrapper(io.BytesIO(b"x" * 3000), chunk_size=1000).read()
    assert body.endswith(b"0\r\n\r\n")
    assert decode(body, None, decoded_length=3000) == (b"x" * 3000, {})


def test_real_boto3_put_object_over_https():
    """End to end: what boto3 sends over TLS (aws-chunked, unsigned payload, CRC32 trailer) verifies and decodes."""
    captured = {}

    def capture(request, **_):
        captured["request"] = request
        raise RuntimeError("captured")

    client = boto3.client("s3", endpoint_url="https://s3.example.test", aws_access_key_id=AWS_KEY,
                          aws_secret_access_key=AWS_SECRET, region_name="us-east-1",
                          config=Config(retries={"max_attempts": 0}))
    client.meta.events.register("before-send", capture)
    payload = random.Random(1).randbytes(200_000)
    with pytest.raises(RuntimeError, match="captured"):
        client.put_object(Bucket="bucket", Key="shard 1.tar", Body=payload)
    request = captured["request"]
    headers = {name.lower(): (value.decode("latin-1") if isinstance(value, bytes) else value)
               for name, value in request.headers.items()}
    path, _, query = request.url.split("s3.example.test", 1)[1].partition("?")
    context = verify_request(request.method, path, query, headers, {AWS_KEY: AWS_SECRET}.get, time.time())
    assert context.payload_mode == "streaming-unsigned-trailer"
    body = request.body.read()
    decoded, trailers = decode(body, context, 65536, trailer_expected="x-amz-trailer" in headers,
                               decoded_length=int(headers["x-amz-decoded-content-length"]))
    assert decoded == payload
    assert trailers == {headers["x-amz-trailer"]: crc32_b64(payload)}


# --- signed streams from the reference encoder ------------------------------------------------------------------

@pytest.mark.parametrize("size, chunk", [(0, 8192), (1, 8192), (8192, 8192), (100_000, 8192), (70_000, 65536)])
def test_reference_signed_streams(size, chunk):
    rng = random.Random(size)
    payload = rng.randbytes(size)
    context = reference_context()
    body = reference_signed_body(payload, chunk, context)
    for _ in range(5):
        assert decode_pieces(random_splits(body, rng), context, decoded_length=size) == (payload, {})
    trailer_context = reference_context("streaming-signed-trailer")
    trailers = [("x-amz-checksum-crc32", crc32_b64(payload))]
    for blank in (False, True):
        body = reference_signed_body(payload, chunk, trailer_context, trailers, blank_before_trailer=blank)
        assert decode_pieces(random_splits(body, rng), trailer_context, trailer_expected=True,
                             decoded_length=size) == (payload, dict(trailers))


def test_several_trailers_in_sent_or_sorted_order():
    context = reference_context("streaming-signed-trailer")
    trailers = [("x-amz-checksum-sha256", "47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU="),
                ("x-amz-checksum-crc32", "AAAAAA==")]
    body = reference_signed_body(b"", 8192, context, trailers)
    assert decode(body, context, trailer_expected=True)[1] == dict(trailers)


def test_signed_data_is_released_only_after_its_chunk_verifies():
    context = reference_context()
    good = random.Random(2).randbytes(30_000)
    body = bytearray(reference_signed_body(good, 10_000, context))
    second_chunk = body.index(good[10_000:10_100])
    body[second_chunk + 5] ^= 1  # corrupt chunk 2
    decoder = AwsChunkedDecoder(context, trailer_expected=False, decoded_length=None)
    released = bytearray()
    with pytest.raises(ChunkedError) as caught:
        for position in range(0, len(body), 777):
            for piece in decoder.feed(bytes(body[position:position + 777])):
                released += piece
    assert caught.value.code == "SignatureDoesNotMatch"
    assert released == good[:10_000]


def test_tolerated_endings():
    context = reference_context("streaming-unsigned-trailer")
    assert decode(b"3\r\nabc\r\n0\r\n\r\n", None) == (b"abc", {})
    assert decode(b"3\r\nabc\r\n0\r\n", None) == (b"abc", {})  # final chunk, then end of body
    assert decode(b"3\r\nabc\r\n0\r\nx-amz-checksum-crc32:NSRBwg==\r\n", context, trailer_expected=True) == \
        (b"abc", {"x-amz-checksum-crc32": "NSRBwg=="})  # no final empty line
    assert decode(b"3\r\nabc\r\n0\r\nx-amz-checksum-crc32:NSRBwg==", context, trailer_expected=True) == \
        (b"abc", {"x-amz-checksum-crc32": "NSRBwg=="})  # last trailer line without CRLF
    assert decode(b"3\r\nabc\r\n0\r\n\r\nx-amz-checksum-crc32 : NSRBwg==\r\n\r\n", context, trailer_expected=True) \
        == (b"abc", {"x-amz-checksum-crc32": "NSRBwg=="})  # MinIO's empty line before the trailer
    assert decode(b"3\r\nabc\r\n0\r\nX-Amz-Checksum-CRC32:NSRBwg==\r\n\r\n", context, trailer_expected=True)[1] \
        == {"x-amz-checksum-crc32": "NSRBwg=="}
    # Unsigned streams ignore chunk extensions; a signed stream in a declared-unsigned request is still unsigned.
    assert decode(b"3;chunk-signature=" + b"0" * 64 + b"\r\nabc\r\n0;x=y\r\n\r\n", None) == (b"abc", {})


def test_finish_is_idempotent_and_errors_are_sticky():
    decoder = AwsChunkedDecoder(None, trailer_expected=False, decoded_length=3)
    assert [bytes(p) for p in decoder.feed(b"3\r\nabc\r\n0\r\n\r\n")] == [b"abc"]
    assert decoder.finish() == {} and decoder.finish() == {}
    broken = AwsChunkedDecoder(None, trailer_expected=False, decoded_length=None)
    with pytest.raises(ChunkedError) as first:
        broken.feed(b"zz\r\n")
    with pytest.raises(ChunkedError) as again:
        broken.feed(b"3\r\nabc\r\n")
    assert again.value is first.value
    with pytest.raises(ChunkedError):
        broken.finish()


# --- hostile and broken input -----------------------------------------------------------------------------------

@pytest.mark.parametrize("body, code, options", [
    (b"zz\r\nab\r\n0\r\n\r\n", "InvalidRequest", {}),
    (b"0x3\r\nabc\r\n0\r\n\r\n", "InvalidRequest", {}),
    (b"1_0\r\n" + b"a" * 16 + b"\r\n0\r\n\r\n", "InvalidRequest", {}),
    (b"-3\r\nabc\r\n0\r\n\r\n", "InvalidRequest", {}),
    (b"\r\nabc\r\n0\r\n\r\n", "InvalidRequest", {}),
    (b"11111111111111111\r\n", "InvalidRequest", {}),
    (b"1000001\r\n", "InvalidRequest", {}),  # over max_chunk
    (b"3\r\nabcX\r\n0\r\n\r\n", "InvalidRequest", {}),  # missing CRLF after data
    (b"3\r\nabc\r0\r\n\r\n", "InvalidRequest", {}),
    (b"3\nabc\r\n0\r\n\r\n", "InvalidRequest", {}),  # bare LF
    (b"3;" + b"x" * MAX_LINE + b"\r\nabc\r\n0\r\n\r\n", "InvalidRequest", {}),  # header line too long
    (b"3" * (MAX_LINE + 10), "InvalidRequest", {}),  # and never terminated
    (b"3\r\nabc\r\n0\r\n\r\nextra", "InvalidRequest", {}),  # data after the end
    (b"3\r\nabc\r\n", "IncompleteBody", {}),  # no final chunk
    (b"3\r\nab", "IncompleteBody", {}),
    (b"", "IncompleteBody", {}),
    (b"3\r\nabc\r\n0\r\n\r\n", "IncompleteBody", {"decoded_length": 4}),
    (b"3\r\nabc\r\n0\r\n\r\n", "InvalidRequest", {"decoded_length": 2}),
    (b"3\r\nabc\r\n0\r\nno-colon-here\r\n\r\n", "MalformedTrailerError", {"trailer_expected": True}),
    (b"3\r\nabc\r\n0\r\nbad name:x\r\n\r\n", "MalformedTrailerError", {"trailer_expected": True}),
    (b"3\r\nabc\r\n0\r\n:x\r\n\r\n", "MalformedTrailerError", {"trailer_expected": True}),
    (b"3\r\nabc\r\n0\r\n\r\n", "MalformedTrailerError", {"trailer_expected": True}),  # trailer missing
    (b"3\r\nabc\r\n0\r\n", "IncompleteBody", {"trailer_expected": True}),  # cut before the trailer
    (b"3\r\nabc\r\n0\r\n\r\n\r\n", "MalformedTrailerError", {"trailer_expected": True}),
    (b"3\r\nabc\r\n0\r\nx-amz-checksum-crc32:NSRBwg==\r\n\r\n", "MalformedTrailerError", {}),  # undeclared
    (b"0\r\n" + b"".join(b"x-amz-meta-%d:v\r\n" % i for i in range(100)) + b"\r\n", "MalformedTrailerError",
     {"trailer_expected": True}),
    (b"0\r\nx-amz-checksum-crc32:" + b"A" * MAX_LINE + b"\r\n\r\n", "InvalidRequest", {"trailer_expected": True}),
])
def test_malformed_bodies(body, code, options):
    for split in (None, 1):
        with pytest.raises(ChunkedError) as caught:
            decode(body, None, split, max_chunk=2**24, **options)
        assert caught.value.code == code, caught.value.message


def test_max_chunk_is_enforced():
    with pytest.raises(ChunkedError, match="exceeds the limit"):
        decode(b"401\r\n" + b"a" * 1025 + b"\r\n0\r\n\r\n", None, max_chunk=1024)


def test_signed_stream_errors():
    context = reference_context()
    trailer_context = reference_context("streaming-signed-trailer")
    payload = b"A" * 8192 + b"B" * 8192
    body = reference_signed_body(payload, 8192, context)
    # Chunks swapped: each keeps its own valid-looking signature, but the chain breaks.
    second = body.index(b"2000;chunk-signature", 1)
    final = body.index(b"\r\n0;chunk-signature", second + 8192)
    swapped = body[second:final + 2] + body[:second] + body[final + 2:]
    signed_trailer = reference_signed_body(payload, 8192, trailer_context, [("x-amz-checksum-crc32", "AAAAAA==")])
    cases = [
        (swapped, context, {}),
        (body.replace(b";chunk-signature=", b";chunk-signaturX=", 1), context, {}),  # signature missing
        (body.replace(b";chunk-signature=", b";", 1), context, {}),
        (reference_signed_body(payload, 8192, reference_context(seed="e" * 64)), context, {}),  # another request
        (body.replace(b"AAAAAAAAAA", b"AAAAACAAAA", 1), context, {}),  # data changed, signatures kept
        (body[:final + 2] + b"1;chunk-signature=" + b"0" * 64 + b"\r\nx\r\n" + body[final + 2:], context, {}),
        (signed_trailer.replace(b":AAAAAA==", b":BBBBBB=="), trailer_context, {"trailer_expected": True}),
        (signed_trailer.split(b"x-amz-trailer-signature")[0] + b"\r\n", trailer_context, {"trailer_expected": True}),
        (signed_trailer.replace(b"x-amz-trailer-signature:", b"x-amz-trailer-signature:0"), trailer_context,
         {"trailer_expected": True}),
    ]
    for broken, ctx, options in cases:
        with pytest.raises(ChunkedError) as caught:
            decode(broken, ctx, **options)
        assert caught.value.code == "SignatureDoesNotMatch", caught.value.message
    assert decode(body, context) == (payload, {})


def test_truncation_at_every_offset_is_an_error_or_the_whole_body():
    rng = random.Random(3)
    payload = rng.randbytes(300)
    for context, trailer in ((reference_context(), False), (reference_context("streaming-signed-trailer"), True)):
        trailers = [("x-amz-checksum-crc32", crc32_b64(payload))] if trailer else ()
        body = reference_signed_body(payload, 64, context, trailers)
        for cut in range(len(body)):
            try:
                decoded, got = decode(body[:cut], context, rng.randint(1, 50), trailer_expected=trailer,
                                      decoded_length=300)
            except ChunkedError:
                continue
            # Only a missing end may be forgiven (the final empty line, the last trailer line's CRLF), and
            # then nothing may differ.
            assert cut >= len(body) - 4 and decoded == payload and got == dict(trailers), cut


def test_corruption_fuzz_never_accepts_different_data():
    rng = random.Random(4)
    for round_number in range(300):
        payload = rng.randbytes(rng.randint(0, 3000))
        trailer = rng.random() < 0.5
        context = reference_context("streaming-signed-trailer" if trailer else "streaming-signed")
        trailers = [("x-amz-checksum-crc32", crc32_b64(payload))] if trailer else ()
        body = bytearray(reference_signed_body(payload, rng.choice([64, 500, 8192]), context, trailers))
        for _ in range(rng.randint(1, 3)):
            position = rng.randrange(len(body))
            body[position] = rng.choice([body[position] ^ (1 << rng.randrange(8)), rng.randrange(256), 13, 10, 59])
        try:
            decoded, got = decode_pieces(random_splits(bytes(body), rng), context, trailer_expected=trailer,
                                         decoded_length=len(payload))
        except ChunkedError:
            continue
        assert decoded == payload and got == dict(trailers), round_number  # e.g. a hex digit's case flipped


def test_garbage_fuzz_raises_only_chunked_error():
    rng = random.Random(5)
    alphabet = b"0123456789abcdefABCDEF;=\r\n:x- "
    for _ in range(3000):
        body = bytes(rng.choice(alphabet) for _ in range(rng.randint(0, 80)))
        for context in (None, reference_context(), reference_context("streaming-signed-trailer")):
            try:
                decode_pieces(random_splits(body, rng), context, trailer_expected=rng.random() < 0.5,
                              decoded_length=rng.choice([None, 0, 5]), max_chunk=64)
            except ChunkedError:
                pass


# --- efficiency -------------------------------------------------------------------------------------------------

def test_large_body_is_decoded_without_copying(capsys):
    chunk = 65536
    payload = random.Random(6).randbytes(32 * 2**20)
    figures = {}
    for label, context in (("unsigned", None), ("signed", reference_context())):
        if context is None:
            body = b"".join(AwsChunkedWrapper(io.BytesIO(payload), chunk_size=chunk))
        else:
            body = reference_signed_body(payload, chunk, context)
        pieces = [body[i:i + 2**20] for i in range(0, len(body), 2**20)]
        best = float("inf")
        for _ in range(3):  # best of three: the first run also pays for warming caches
            decoder = AwsChunkedDecoder(context, trailer_expected=False, decoded_length=len(payload))
            started = time.perf_counter()
            out = []
            for piece in pieces:
                out.extend(decoder.feed(piece))
            decoder.finish()
            best = min(best, time.perf_counter() - started)
        figures[label] = len(payload) / best / 1e9
        assert sum(len(p) for p in out) == len(payload)
        views = [p for p in out if isinstance(p, memoryview) and any(p.obj is piece for piece in pieces)]
        # Only chunks straddling two 1 MiB pieces are copied (into one buffer each), the rest are slices.
        assert len(views) >= len(out) - 2 * len(pieces)
        assert b"".join(out[:3]) == payload[:len(b"".join(out[:3]))]
    with capsys.disabled():
        print("\naws-chunked decode GB/s: " + ", ".join(f"{k} {v:.1f}" for k, v in figures.items()))
    assert figures["unsigned"] > 0.5 and figures["signed"] > 0.1


def test_byte_at_a_time_is_linear():
    payload = random.Random(7).randbytes(200_000)
    context = reference_context("streaming-signed-trailer")
    body = reference_signed_body(payload, 65536, context, [("x-amz-checksum-crc32", crc32_b64(payload))])
    started = time.perf_counter()
    decoded, trailers = decode(body, context, 1, trailer_expected=True, decoded_length=len(payload))
    assert decoded == payload and trailers == {"x-amz-checksum-crc32": crc32_b64(payload)}
    assert time.perf_counter() - started < 30  # ~1-2 µs a byte; quadratic copying would take hours
