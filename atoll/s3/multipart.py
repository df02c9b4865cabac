"""Multipart uploads: Create, UploadPart, UploadPartCopy, Complete, Abort, ListParts, ListMultipartUploads.

Parts stream to their own blobs; Complete only writes metadata (the object's extents are the parts), so it runs in
O(parts) however large the object, well inside botocore's 60 s read timeout.
"""

from __future__ import annotations

import re

from atoll import errors
from atoll.http.server import Response
from atoll.s3 import xml
from atoll.s3.context import S3Context
from atoll.s3.errors import S3Error
from atoll.s3.objects import copy_source, stored_headers, user_metadata, write_condition
from atoll.core import checksums as cks
from atoll.s3.payload import body_source, checksum_algorithm, declared_size

_XML = ("Content-Type", "application/xml")
_COMPLETE_BODY_LIMIT = 4 << 20
_COPY_RANGE = re.compile(r"^bytes=(\d+)-(\d+)$")


async def create_upload(ctx: S3Context) -> Response:
    identity = ctx.require_identity()
    algorithm = checksum_algorithm(ctx.headers.get("x-amz-checksum-algorithm"))
    checksum_type = ctx.headers.get("x-amz-checksum-type", "").strip().upper()
    if checksum_type not in ("", "COMPOSITE", "FULL_OBJECT"):
        raise S3Error("InvalidRequest", "Value for x-amz-checksum-type header is invalid.")
    if checksum_type and not algorithm:
        raise S3Error("InvalidRequest", "The x-amz-checksum-type header can only be used with the "
                                        "x-amz-checksum-algorithm header.")
    if checksum_type == "FULL_OBJECT" and algorithm in ("sha1", "sha256"):
        raise S3Error("InvalidRequest", "The FULL_OBJECT checksum type cannot be used with the "
                                        f"{algorithm.upper()} checksum algorithm.")
    if algorithm and not checksum_type:
        checksum_type = "FULL_OBJECT" if algorithm == "crc64nvme" else "COMPOSITE"
    upload = await ctx.ns.create_upload(identity, ctx.bucket, ctx.key, headers=stored_headers(ctx.headers),
                                        user_meta=user_metadata(ctx.headers), checksum_algorithm=algorithm,
                                        checksum_type=checksum_type)
    out = [_XML]
    if algorithm:
        out += [("x-amz-checksum-algorithm", algorithm.upper()), ("x-amz-checksum-type", checksum_type)]
    return Response(200, out, xml.initiate_upload(ctx.bucket, ctx.key, upload.upload_id))


def _part_number(ctx: S3Context) -> int:
    return ctx.int_param("partNumber", 0, low=1, high=10000)


async def upload_part(ctx: S3Context) -> Response:
    identity = ctx.require_identity()
    body, algorithms, verify = body_source(ctx)
    part = await ctx.ns.upload_part(identity, ctx.bucket, ctx.key, ctx.query["uploadId"], _part_number(ctx), body,
                                    algorithms=algorithms, verify=verify, declared_size=declared_size(ctx))
    out = [("ETag", f'"{part.etag}"')]
    out.extend((f"x-amz-checksum-{alg}", value) for alg, value in part.checksums.items())
    return Response(200, out)


async def upload_part_copy(ctx: S3Context) -> Response:
    identity = ctx.require_identity()
    source = copy_source(ctx)
    raw_range = ctx.headers.get("x-amz-copy-source-range")
    if raw_range is not None:
        match = _COPY_RANGE.match(raw_range.strip())
        if match is None or int(match.group(2)) < int(match.group(1)):
            raise S3Error("InvalidArgument", "The x-amz-copy-source-range value must be of the form "
                                             "bytes=first-last where first and last are the zero-based offsets of "
                                             "the first and last bytes to copy",
                          ArgumentName="x-amz-copy-source-range", ArgumentValue=raw_range[:64])
        source.byte_range = (int(match.group(1)), int(match.group(2)))
    try:
        part = await ctx.ns.upload_part_copy(identity, ctx.bucket, ctx.key, ctx.query["uploadId"],
                                             _part_number(ctx), source)
    except errors.NotModified:
        raise S3Error("PreconditionFailed", "At least one of the pre-conditions you specified did not hold",
                      status=412) from None
    return Response(200, [_XML], xml.copy_result("CopyPartResult", part.etag, part.last_modified, part.checksums))


async def complete_upload(ctx: S3Context) -> Response:
    identity = ctx.require_identity()
    body = await ctx.http.read_body(_COMPLETE_BODY_LIMIT)
    requested = xml.parse_complete(body)
    version = await ctx.ns.complete_upload(identity, ctx.bucket, ctx.key, ctx.query["uploadId"], requested,
                                           condition=write_condition(ctx.headers),
                                           full_object_checksum=_claimed_checksums(ctx))
    host = ctx.headers.get("host", "")
    location = f"http://{host}/{ctx.bucket}/{ctx.key}"
    alg_headers = [(f"x-amz-checksum-{a}", v) for a, v in version.checksums.items()]
    return Response(200, [_XML, *alg_headers],
                    xml.complete_upload(location, ctx.bucket, ctx.key, version.etag, version.checksums,
                                        version.checksum_type))


def _claimed_checksums(ctx: S3Context) -> dict[str, str]:
    """Whole-object checksums a client states on Complete (a composite value carries its "-N" suffix)."""
    return {alg: ctx.headers[f"x-amz-checksum-{alg}"].strip() for alg in cks.ALGORITHMS
            if f"x-amz-checksum-{alg}" in ctx.headers}


async def abort_upload(ctx: S3Context) -> Response:
    await ctx.ns.abort_upload(ctx.require_identity(), ctx.bucket, ctx.key, ctx.query["uploadId"])
    return Response(204)


async def list_parts(ctx: S3Context) -> Response:
    identity = ctx.require_identity()
    max_parts = min(ctx.int_param("max-parts", 1000, low=0), 1000)
    after = ctx.int_param("part-number-marker", 0, low=0)
    upload, parts = await ctx.ns.list_parts(identity, ctx.bucket, ctx.key, ctx.query["uploadId"], after,
                                            max_parts + 1)
    truncated = len(parts) > max_parts
    parts = parts[:max_parts]
    return Response(200, [_XML], xml.list_parts(upload, parts, after, max_parts, truncated, identity.display_name))


async def list_uploads(ctx: S3Context) -> Response:
    identity = ctx.require_identity()
    q = ctx.query
    max_uploads = min(ctx.int_param("max-uploads", 1000, low=0), 1000)
    url_encode = q.get("encoding-type") == "url"
    uploads = await ctx.ns.list_uploads(identity, ctx.bucket, prefix=q.get("prefix", ""),
                                        key_marker=q.get("key-marker", ""),
                                        upload_id_marker=q.get("upload-id-marker", ""), limit=max_uploads + 1)
    truncated = len(uploads) > max_uploads
    uploads = uploads[:max_uploads]
    return Response(200, [_XML], xml.list_uploads(ctx.bucket, uploads, q.get("prefix", ""), q.get("key-marker", ""),
                                                  q.get("upload-id-marker", ""), max_uploads, truncated, url_encode,
                                                  q.get("delimiter", "")))
