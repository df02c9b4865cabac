"""Get Blob and Get Blob Properties answers are built from headers cached per blob version (atoll.blob.blobs):
every header once, a SAS's signed response headers still override them after a plain read cached them, and new
properties or metadata are served at once."""

from __future__ import annotations

import secrets
import urllib.request
from datetime import datetime, timedelta, timezone

from azure.storage.blob import BlobSasPermissions, ContentSettings, generate_blob_sas

BODY = b"cached-blob-head-" * 64


def _get(url: str, method: str = "GET") -> tuple[int, list[tuple[str, str]], bytes]:
    with urllib.request.urlopen(urllib.request.Request(url, method=method), timeout=30) as answer:
        return answer.status, [(k.lower(), v) for k, v in answer.getheaders()], answer.read()


def _once(pairs: list[tuple[str, str]]) -> dict[str, str]:
    names = [name for name, _ in pairs]
    assert len(names) == len(set(names)), f"a header was sent twice: {names}"
    return dict(pairs)


def test_cached_blob_heads_keep_overrides_and_changes(blob_service):
    container = blob_service.create_container(f"heads-{secrets.token_hex(4)}")
    blob = container.get_blob_client("b.bin")
    blob.upload_blob(BODY, content_settings=ContentSettings(content_type="text/plain"), metadata={"colour": "blue"})

    def url(**overrides) -> str:
        sas = generate_blob_sas(blob_service.account_name, container.container_name, "b.bin",
                                account_key=blob_service.credential.account_key,
                                permission=BlobSasPermissions(read=True),
                                expiry=datetime.now(timezone.utc) + timedelta(hours=1), **overrides)
        return f"{blob.url}?{sas}"

    plain = url()
    for _ in range(3):  # the first answer fills the cache, the others come from it
        status, pairs, body = _get(plain)
        got = _once(pairs)
        assert status == 200 and body == BODY and got["content-type"] == "text/plain"
        assert got["x-ms-meta-colour"] == "blue" and got["x-ms-lease-state"] == "available"
        assert got["content-md5"] and got["content-length"] == str(len(BODY)) and got["x-ms-request-id"]
        status, pairs, _ = _get(plain, "HEAD")
        props = _once(pairs)
        assert status == 200 and props["content-type"] == "text/plain" and props["etag"] == got["etag"]
        assert props["x-ms-access-tier"] == "Hot"

    status, pairs, _ = _get(url(content_type="text/csv", cache_control="no-store"))
    got = _once(pairs)
    assert status == 200 and got["content-type"] == "text/csv" and got["cache-control"] == "no-store"

    blob.set_blob_metadata({"colour": "red"})
    blob.set_http_headers(ContentSettings(content_type="application/json"))
    status, pairs, body = _get(plain)
    got = _once(pairs)
    assert body == BODY and got["content-type"] == "application/json" and got["x-ms-meta-colour"] == "red"
    container.delete_container()
