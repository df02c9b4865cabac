"""Bucket operations, ownership between users, NotImplemented for what Atoll does not do, and virtual-hosted
style addressing (bucket in the Host header) with a real boto3 client."""

from __future__ import annotations

import http.client
import io
import secrets
from urllib.parse import urlsplit

import botocore.awsrequest
import pytest
from s3util import failure, signed_request, status_of


def fresh_name(tag: str) -> str:
    return f"b-{tag}-{secrets.token_hex(4)}"


@pytest.mark.parametrize("name", ["abc", "a-b.c", "a" * 63, "0abc", "my.bucket.name", "9-9"])
def test_valid_bucket_names(s3, name):
    name = name if len(name) == 63 else f"{name}-{secrets.token_hex(3)}"
    assert status_of(s3.create_bucket(Bucket=name)) == 200
    assert status_of(s3.head_bucket(Bucket=name)) == 200
    s3.delete_bucket(Bucket=name)


@pytest.mark.parametrize("name", ["ab", "a" * 64, "Upper-case", "under_score", "-starts-with-dash", "ends-with-dash-",
                                  "double..dot", "192.168.10.20", "xn--punycode", "dot-.dash", "bucket-s3alias",
                                  ".leading-dot", "sthree-reserved"])
def test_invalid_bucket_names(s3, name):
    error = failure(s3.create_bucket, Bucket=name)
    assert (error.code, error.status) == ("InvalidBucketName", 400)


def test_location_constraint(s3):
    name = fresh_name("loc")
    # This island is us-east-1: naming it explicitly is accepted (as MinIO and Ceph do), any other region is not.
    s3.create_bucket(Bucket=name, CreateBucketConfiguration={"LocationConstraint": "us-east-1"})
    assert s3.get_bucket_location(Bucket=name)["LocationConstraint"] is None  # S3 reports us-east-1 as empty
    assert s3.head_bucket(Bucket=name)["ResponseMetadata"]["HTTPHeaders"]["x-amz-bucket-region"] == "us-east-1"
    error = failure(s3.create_bucket, Bucket=fresh_name("eu"),
                    CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
    assert (error.code, error.status) == ("InvalidLocationConstraint", 400)
    s3.delete_bucket(Bucket=name)


def test_bucket_already_exists_or_owned(s3, other_user):
    name = fresh_name("own")
    s3.create_bucket(Bucket=name)
    error = failure(s3.create_bucket, Bucket=name)
    assert (error.code, error.status) == ("BucketAlreadyOwnedByYou", 409)
    error = failure(other_user["client"].create_bucket, Bucket=name)
    assert (error.code, error.status) == ("BucketAlreadyExists", 409)
    s3.delete_bucket(Bucket=name)


def test_delete_bucket(s3):
    name = fresh_name("del")
    s3.create_bucket(Bucket=name)
    s3.put_object(Bucket=name, Key="k", Body=b"x")
    upload = s3.create_multipart_upload(Bucket=name, Key="pending")["UploadId"]
    error = failure(s3.delete_bucket, Bucket=name)
    assert (error.code, error.status) == ("BucketNotEmpty", 409)
    s3.delete_object(Bucket=name, Key="k")
    assert status_of(s3.delete_bucket(Bucket=name)) == 204  # pending uploads do not keep a bucket alive
    error = failure(s3.delete_bucket, Bucket=name)
    assert (error.code, error.status) == ("NoSuchBucket", 404)
    assert failure(s3.list_parts, Bucket=name, Key="pending", UploadId=upload).status == 404


def test_head_bucket_and_other_users(s3, other_user):
    name = fresh_name("head")
    s3.create_bucket(Bucket=name)
    assert failure(s3.head_bucket, Bucket=fresh_name("missing")).status == 404
    theirs = other_user["client"]
    assert failure(theirs.head_bucket, Bucket=name).status == 403
    assert failure(theirs.put_object, Bucket=name, Key="k", Body=b"x").code == "AccessDenied"
    assert failure(theirs.list_objects_v2, Bucket=name).code == "AccessDenied"
    assert name not in [b["Name"] for b in theirs.list_buckets()["Buckets"]]
    mine = fresh_name("theirs")
    theirs.create_bucket(Bucket=mine)
    assert [b["Name"] for b in theirs.list_buckets()["Buckets"]] == [mine]
    listed = s3.list_buckets()["Buckets"]  # root sees every bucket, in name order
    names = [b["Name"] for b in listed]
    assert name in names and mine in names and names == sorted(names)
    theirs.delete_bucket(Bucket=mine)
    s3.delete_bucket(Bucket=name)


def test_versioning_reports_an_unversioned_bucket(s3, bucket):
    response = s3.get_bucket_versioning(Bucket=bucket)
    assert status_of(response) == 200 and "Status" not in response and "MFADelete" not in response


@pytest.mark.parametrize("call, kwargs", [
    ("get_bucket_acl", {}),
    ("put_bucket_tagging", {"Tagging": {"TagSet": [{"Key": "a", "Value": "b"}]}}),
    ("get_bucket_policy", {}),
    ("get_bucket_lifecycle_configuration", {}),
    ("get_bucket_cors", {}),
    ("put_bucket_versioning", {"VersioningConfiguration": {"Status": "Enabled"}}),
    ("list_object_versions", {}),
])
def test_unsupported_bucket_operations_are_not_implemented(s3, bucket, call, kwargs):
    error = failure(getattr(s3, call), Bucket=bucket, **kwargs)
    assert (error.code, error.status) == ("NotImplemented", 501)


def test_unsupported_object_operations_are_not_implemented(s3, bucket):
    s3.put_object(Bucket=bucket, Key="k", Body=b"x")
    for call, kwargs in [(s3.get_object_acl, {}), (s3.get_object_tagging, {}),
                         (s3.put_object_tagging, {"Tagging": {"TagSet": []}})]:
        error = failure(call, Bucket=bucket, Key="k", **kwargs)
        assert (error.code, error.status) == ("NotImplemented", 501), call


# virtual-hosted style ----------------------------------------------------------------------------------------
class _Body(io.BytesIO):
    """What botocore expects of a raw urllib3 response body."""

    def stream(self, amt=1 << 16, decode_content=None):
        while chunk := self.read(amt):
            yield chunk


def _deliver_to_loopback(port: int):
    """A botocore ``before-send`` hook: send the request (signed for its virtual-hosted URL) to 127.0.0.1 with
    its Host header intact, so no DNS name for <bucket>.s3.localtest is needed."""

    def send(request, **_):
        url = urlsplit(request.url)
        headers = {k: v for k, v in request.headers.items() if k.lower() != "host"}
        headers["Host"] = url.netloc  # exactly what was signed
        body = request.body
        if hasattr(body, "read"):
            body = body.read()
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        try:
            conn.request(request.method, url.path + (f"?{url.query}" if url.query else ""), body=body or None,
                         headers=headers)
            response = conn.getresponse()
            data = response.read()
            return botocore.awsrequest.AWSResponse(request.url, response.status,
                                                   {k.lower(): v for k, v in response.getheaders()}, _Body(data))
        finally:
            conn.close()

    return send


def test_virtual_hosted_style(new_server):
    import boto3
    from botocore.config import Config

    server = new_server(extra_args=["--s3-domain", "s3.localtest"])
    endpoint = f"http://s3.localtest:{server.port}"
    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                          aws_access_key_id=server.access_key, aws_secret_access_key=server.secret_key,
                          config=Config(s3={"addressing_style": "virtual"}, retries={"max_attempts": 1}))
    client.meta.events.register("before-send.s3", _deliver_to_loopback(server.port))

    client.create_bucket(Bucket="vhost")
    client.put_object(Bucket="vhost", Key="dir/obj name.txt", Body=b"virtual", Metadata={"k": "v"})
    got = client.get_object(Bucket="vhost", Key="dir/obj name.txt", Range="bytes=1-3")
    assert got["Body"].read() == b"irt" and got["ContentRange"] == "bytes 1-3/7"
    assert client.head_object(Bucket="vhost", Key="dir/obj name.txt")["Metadata"] == {"k": "v"}
    page = client.list_objects_v2(Bucket="vhost", Delimiter="/")
    assert [p["Prefix"] for p in page["CommonPrefixes"]] == ["dir/"]
    assert [b["Name"] for b in client.list_buckets()["Buckets"]] == ["vhost"]  # the bare domain: service level
    assert failure(client.head_object, Bucket="vhost", Key="missing").status == 404

    # The same object through a raw request: the key is the whole path, even when it starts with the bucket name.
    raw = signed_request(server, "GET", "/dir/obj%20name.txt", host=f"vhost.s3.localtest:{server.port}")
    assert raw.status == 200 and raw.body == b"virtual"
    raw = signed_request(server, "PUT", "/vhost/nested", host=f"vhost.s3.localtest:{server.port}", body=b"n")
    assert raw.status == 200
    assert client.get_object(Bucket="vhost", Key="vhost/nested")["Body"].read() == b"n"
    # Path style keeps working on the same server.
    path_style = server.client()
    assert path_style.get_object(Bucket="vhost", Key="dir/obj name.txt")["Body"].read() == b"virtual"
    # A Host naming an unknown bucket under the domain is NoSuchBucket, not a path-style guess.
    raw = signed_request(server, "GET", "/", query="list-type=2", host=f"nope.s3.localtest:{server.port}")
    assert raw.status == 404 and b"NoSuchBucket" in raw.body
