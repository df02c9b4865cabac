"""Cleaning up multipart uploads that a failed or crashed upload left in a cold store.

obstore runs multipart uploads itself and aborts them when they fail inside it, but not when the process dies
or the call is cancelled (the watchdog cuts stalled transfers): the parts then stay in the cold store, and on
S3 they are billed until someone aborts the upload. obstore has no call to list or abort uploads, so this module
makes the two S3 requests that do (ListMultipartUploads with the key as prefix, AbortMultipartUpload), signed
with SigV4 by awscrt and sent with the standard library's HTTP client (in a thread: these calls are rare).

Azure keeps uncommitted blocks invisible and discards them when the blob is next committed (the redone upload)
or after seven days; the drain always redoes a failed upload (a refused write-through upload is not redone
and its blocks wait for Azure's seven days). GCS and other
stores: nothing is done (GCS's XML multipart API would need HMAC keys); see docs/NOTES.md.
"""

from __future__ import annotations

import http.client
import logging
import os
from typing import Mapping
from urllib.parse import quote, urlsplit

import defusedxml.ElementTree as ET
from awscrt import auth, http as crt_http

from atoll import errors

log = logging.getLogger("atoll.cold")

_EMPTY_SHA256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
_NS = "{http://s3.amazonaws.com/doc/2006-03-01/}"


def _option(settings: Mapping[str, str], *names: str, env: str = "") -> str:
    for name in names:
        if settings.get(name):
            return settings[name]
    return os.environ.get(env, "") if env else ""


class S3Leftovers:
    """Finds and aborts the multipart uploads of one key in one S3 bucket (the link's)."""

    def __init__(self, bucket: str, prefix: str, settings: Mapping[str, str], endpoint: str,
                 timeout: float = 10.0) -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.region = _option(settings, "aws_region", "region", env="AWS_REGION") or \
            os.environ.get("AWS_DEFAULT_REGION", "") or "us-east-1"
        self.timeout = timeout
        if endpoint:
            self.base = endpoint.rstrip("/")
            self.path_style = True
        else:
            self.base = f"https://{bucket}.s3.{self.region}.amazonaws.com"
            self.path_style = False
        key_id = _option(settings, "aws_access_key_id", "access_key_id", env="AWS_ACCESS_KEY_ID")
        secret = _option(settings, "aws_secret_access_key", "secret_access_key", env="AWS_SECRET_ACCESS_KEY")
        token = _option(settings, "aws_session_token", "session_token", "token", env="AWS_SESSION_TOKEN")
        if key_id and secret:
            self.credentials = auth.AwsCredentialsProvider.new_static(key_id, secret, token or None)
        else:
            self.credentials = auth.AwsCredentialsProvider.new_default_chain()

    def _object_path(self, key: str) -> str:
        full = f"{self.prefix}/{key}" if self.prefix else key
        return ("/" + self.bucket if self.path_style else "") + "/" + quote(full, safe="/~")

    def _request(self, method: str, path: str, query: str) -> tuple[int, bytes]:
        parts = urlsplit(self.base)
        base_path = parts.path.rstrip("/")
        target = f"{base_path}{path}?{query}"
        request = crt_http.HttpRequest(method, target, crt_http.HttpHeaders([("host", parts.netloc)]))
        config = auth.AwsSigningConfig(
            algorithm=auth.AwsSigningAlgorithm.V4, signature_type=auth.AwsSignatureType.HTTP_REQUEST_HEADERS,
            credentials_provider=self.credentials, region=self.region, service="s3",
            signed_body_value=_EMPTY_SHA256, signed_body_header_type=auth.AwsSignedBodyHeaderType.X_AMZ_CONTENT_SHA_256,
            use_double_uri_encode=False, should_normalize_uri_path=False)
        auth.aws_sign_request(request, config).result(self.timeout)
        connection_type = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
        connection = connection_type(parts.hostname, parts.port, timeout=self.timeout)
        try:
            connection.request(method, target, headers=dict(request.headers))
            response = connection.getresponse()
            return response.status, response.read(1 << 20)
        finally:
            connection.close()

    def abort(self, key: str) -> int:
        """Abort every unfinished multipart upload of exactly ``key``; returns how many. Not filtered by start
        time: Atoll owns the keys of the buckets it drains (and some S3 implementations report no real
        initiation time). Blocking: run it in a thread. Raises ColdStoreUnavailable when S3 cannot be asked."""
        full = f"{self.prefix}/{key}" if self.prefix else key
        bucket_path = f"/{self.bucket}" if self.path_style else ""
        try:
            status, body = self._request("GET", bucket_path + "/", f"prefix={quote(full, safe='~')}&uploads=")
            if status != 200:
                raise errors.ColdStoreUnavailable(f"listing multipart uploads answered {status}")
            aborted = 0
            for upload in ET.fromstring(body).iter(f"{_NS}Upload"):
                if upload.findtext(f"{_NS}Key") != full:
                    continue
                upload_id = upload.findtext(f"{_NS}UploadId") or ""
                status, _ = self._request("DELETE", self._object_path(key),
                                          f"uploadId={quote(upload_id, safe='~')}")
                if status not in (204, 200, 404):
                    raise errors.ColdStoreUnavailable(f"aborting a multipart upload answered {status}")
                aborted += 1
            return aborted
        except errors.AtollError:
            raise
        except Exception as exc:  # noqa: BLE001 - network or signing trouble: try again later
            raise errors.ColdStoreUnavailable(f"cannot clean up multipart uploads ({type(exc).__name__})") from None
