"""Bucket operations: ListBuckets, CreateBucket, HeadBucket, DeleteBucket, GetBucketLocation,
GetBucketVersioning."""

from __future__ import annotations

from atoll.http.server import Response
from atoll.s3 import xml
from atoll.s3.context import S3Context

_XML = ("Content-Type", "application/xml")
_CREATE_BODY_LIMIT = 64 << 10


async def list_buckets(ctx: S3Context) -> Response:
    identity = ctx.require_identity()
    buckets = await ctx.ns.list_buckets(identity)
    return Response(200, [_XML], xml.list_buckets(buckets, identity.owner_id, identity.display_name))


async def create_bucket(ctx: S3Context) -> Response:
    identity = ctx.require_identity()
    body = await ctx.http.read_body(_CREATE_BODY_LIMIT)
    region = xml.parse_create_bucket(body)
    await ctx.ns.create_bucket(identity, ctx.bucket, region)
    return Response(200, [("Location", f"/{ctx.bucket}")])


async def head_bucket(ctx: S3Context) -> Response:
    bucket = await ctx.ns.bucket_for(ctx.identity, ctx.bucket, "read")
    return Response(200, [("x-amz-bucket-region", bucket.region)], head_only=True, content_length=0)


async def delete_bucket(ctx: S3Context) -> Response:
    await ctx.ns.delete_bucket(ctx.require_identity(), ctx.bucket)
    return Response(204)


async def get_bucket_location(ctx: S3Context) -> Response:
    bucket = await ctx.ns.bucket_for(ctx.identity, ctx.bucket, "read")
    return Response(200, [_XML], xml.location(bucket.region))


async def get_bucket_versioning(ctx: S3Context) -> Response:
    await ctx.ns.bucket_for(ctx.identity, ctx.bucket, "read")
    return Response(200, [_XML], xml.versioning())
