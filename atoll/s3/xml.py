"""Every S3 XML document Atoll reads or writes; the only place S3 tag names live.

Responses are built as strings (listing pages of 1,000 entries are on the hot path of data loaders); requests are
parsed with defusedxml, which refuses entity expansion bombs and external entities.
"""

from __future__ import annotations

import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from urllib.parse import quote

from defusedxml import ElementTree as SafeET
from defusedxml.common import DefusedXmlException

from atoll import errors
from atoll.core.listing import ListPage
from atoll.core.models import Bucket, Part, Upload
from atoll.s3.numbers import is_ascii_digits

NS = "http://s3.amazonaws.com/doc/2006-03-01/"
HEADER = '<?xml version="1.0" encoding="UTF-8"?>\n'


def esc(text: str) -> str:
    if "&" in text:
        text = text.replace("&", "&amp;")
    if "<" in text:
        text = text.replace("<", "&lt;")
    if ">" in text:
        text = text.replace(">", "&gt;")
    if '"' in text:
        text = text.replace('"', "&quot;")
    return text


def iso8601(ts: float) -> str:
    millis = int(ts * 1000) % 1000
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{millis:03d}Z"


def _encoder(url: bool):
    if url:
        return lambda s: quote(s, safe="/")  # '+' becomes %2B, space %20: botocore unquote_plus()es both back
    return esc


def error(code: str, message: str, request_id: str, resource: dict[str, str]) -> bytes:
    extra = "".join(f"<{name}>{esc(value)}</{name}>" for name, value in resource.items())
    return (f"{HEADER}<Error><Code>{code}</Code><Message>{esc(message)}</Message>{extra}"
            f"<RequestId>{request_id}</RequestId><HostId>{request_id}</HostId></Error>").encode()


def list_buckets(buckets: list[Bucket], owner_id: str, display_name: str) -> bytes:
    items = "".join(f"<Bucket><Name>{b.name}</Name><CreationDate>{iso8601(b.created)}</CreationDate>"
                    f"<BucketRegion>{b.region}</BucketRegion></Bucket>" for b in buckets)
    return (f'{HEADER}<ListAllMyBucketsResult xmlns="{NS}"><Owner><ID>{owner_id}</ID>'
            f"<DisplayName>{esc(display_name)}</DisplayName></Owner><Buckets>{items}</Buckets>"
            f"</ListAllMyBucketsResult>").encode()


def location(region: str) -> bytes:
    value = "" if region == "us-east-1" else region
    return f'{HEADER}<LocationConstraint xmlns="{NS}">{value}</LocationConstraint>'.encode()


def versioning() -> bytes:
    return f'{HEADER}<VersioningConfiguration xmlns="{NS}"/>'.encode()


@dataclass(slots=True)
class ListParams:
    bucket: str
    prefix: str
    delimiter: str
    max_keys: int
    url_encode: bool
    fetch_owner: bool
    v2: bool
    start_after: str = ""
    continuation_token: str = ""
    next_token: str = ""
    marker: str = ""


def list_objects(page: ListPage, params: ListParams, owners: dict[str, str]) -> bytes:
    enc = _encoder(params.url_encode)
    out = [f'{HEADER}<ListBucketResult xmlns="{NS}"><Name>{esc(params.bucket)}</Name>'
           f"<Prefix>{enc(params.prefix)}</Prefix>"]
    if params.v2:
        if params.start_after:
            out.append(f"<StartAfter>{enc(params.start_after)}</StartAfter>")
        if params.continuation_token:
            out.append(f"<ContinuationToken>{esc(params.continuation_token)}</ContinuationToken>")
        if page.truncated:
            out.append(f"<NextContinuationToken>{esc(params.next_token)}</NextContinuationToken>")
        out.append(f"<KeyCount>{len(page.entries) + len(page.prefixes)}</KeyCount>")
    else:
        out.append(f"<Marker>{enc(params.marker)}</Marker>")
        if page.truncated and params.delimiter and page.last is not None:
            out.append(f"<NextMarker>{enc(page.last)}</NextMarker>")
    out.append(f"<MaxKeys>{params.max_keys}</MaxKeys>")
    if params.delimiter:
        out.append(f"<Delimiter>{enc(params.delimiter)}</Delimiter>")
    if params.url_encode:
        out.append("<EncodingType>url</EncodingType>")
    out.append(f"<IsTruncated>{'true' if page.truncated else 'false'}</IsTruncated>")
    show_owner = params.fetch_owner or not params.v2
    for e in page.entries:
        owner = ""
        if show_owner:
            owner = f"<Owner><ID>{e.owner_id}</ID><DisplayName>{esc(owners.get(e.owner_id, ''))}</DisplayName></Owner>"
        out.append(f"<Contents><Key>{enc(e.key)}</Key><LastModified>{iso8601(e.last_modified)}</LastModified>"
                   f"<ETag>&quot;{e.etag}&quot;</ETag><Size>{e.size}</Size>{owner}"
                   f"<StorageClass>STANDARD</StorageClass></Contents>")
    for p in page.prefixes:
        out.append(f"<CommonPrefixes><Prefix>{enc(p)}</Prefix></CommonPrefixes>")
    out.append("</ListBucketResult>")
    return "".join(out).encode()


def copy_result(tag: str, etag: str, last_modified: float, checksums: dict[str, str]) -> bytes:
    sums = "".join(f"<Checksum{_CHECKSUM_TAGS[a]}>{v}</Checksum{_CHECKSUM_TAGS[a]}>" for a, v in checksums.items()
                   if a in _CHECKSUM_TAGS)
    return (f'{HEADER}<{tag} xmlns="{NS}"><LastModified>{iso8601(last_modified)}</LastModified>'
            f"<ETag>&quot;{etag}&quot;</ETag>{sums}</{tag}>").encode()


_CHECKSUM_TAGS = {"crc32": "CRC32", "crc32c": "CRC32C", "crc64nvme": "CRC64NVME", "sha1": "SHA1", "sha256": "SHA256"}
_TAG_TO_ALG = {f"Checksum{v}": k for k, v in _CHECKSUM_TAGS.items()}


def initiate_upload(bucket: str, key: str, upload_id: str) -> bytes:
    return (f'{HEADER}<InitiateMultipartUploadResult xmlns="{NS}"><Bucket>{esc(bucket)}</Bucket>'
            f"<Key>{esc(key)}</Key><UploadId>{upload_id}</UploadId></InitiateMultipartUploadResult>").encode()


def complete_upload(location_url: str, bucket: str, key: str, etag: str, checksums: dict[str, str],
                    checksum_type: str) -> bytes:
    sums = "".join(f"<Checksum{_CHECKSUM_TAGS[a]}>{v}</Checksum{_CHECKSUM_TAGS[a]}>" for a, v in checksums.items()
                   if a in _CHECKSUM_TAGS)
    kind = f"<ChecksumType>{checksum_type}</ChecksumType>" if checksum_type and checksums else ""
    return (f'{HEADER}<CompleteMultipartUploadResult xmlns="{NS}"><Location>{esc(location_url)}</Location>'
            f"<Bucket>{esc(bucket)}</Bucket><Key>{esc(key)}</Key><ETag>&quot;{etag}&quot;</ETag>{sums}{kind}"
            f"</CompleteMultipartUploadResult>").encode()


def list_parts(upload: Upload, parts: list[Part], after: int, max_parts: int, truncated: bool,
               display_name: str) -> bytes:
    items = []
    for p in parts:
        sums = "".join(f"<Checksum{_CHECKSUM_TAGS[a]}>{v}</Checksum{_CHECKSUM_TAGS[a]}>"
                       for a, v in p.checksums.items() if a in _CHECKSUM_TAGS)
        items.append(f"<Part><PartNumber>{p.part_number}</PartNumber><LastModified>{iso8601(p.last_modified)}"
                     f"</LastModified><ETag>&quot;{p.etag}&quot;</ETag><Size>{p.size}</Size>{sums}</Part>")
    next_marker = parts[-1].part_number if parts else after
    algorithm = (f"<ChecksumAlgorithm>{upload.checksum_algorithm.upper()}</ChecksumAlgorithm>"
                 if upload.checksum_algorithm else "")
    owner = f"<ID>{upload.owner_id}</ID><DisplayName>{esc(display_name)}</DisplayName>"
    return (f'{HEADER}<ListPartsResult xmlns="{NS}"><Bucket>{esc(upload.bucket)}</Bucket>'
            f"<Key>{esc(upload.key)}</Key><UploadId>{upload.upload_id}</UploadId>"
            f"<Initiator>{owner}</Initiator><Owner>{owner}</Owner><StorageClass>STANDARD</StorageClass>"
            f"<PartNumberMarker>{after}</PartNumberMarker><NextPartNumberMarker>{next_marker}"
            f"</NextPartNumberMarker><MaxParts>{max_parts}</MaxParts>"
            f"<IsTruncated>{'true' if truncated else 'false'}</IsTruncated>{algorithm}{''.join(items)}"
            f"</ListPartsResult>").encode()


def list_uploads(bucket: str, uploads: list[Upload], prefix: str, key_marker: str, upload_id_marker: str,
                 max_uploads: int, truncated: bool, url_encode: bool, delimiter: str) -> bytes:
    enc = _encoder(url_encode)
    items = "".join(
        f"<Upload><Key>{enc(u.key)}</Key><UploadId>{u.upload_id}</UploadId><Initiator><ID>{u.owner_id}</ID>"
        f"</Initiator><Owner><ID>{u.owner_id}</ID></Owner><StorageClass>STANDARD</StorageClass>"
        f"<Initiated>{iso8601(u.initiated)}</Initiated></Upload>" for u in uploads)
    nxt = ""
    if truncated and uploads:
        nxt = (f"<NextKeyMarker>{enc(uploads[-1].key)}</NextKeyMarker>"
               f"<NextUploadIdMarker>{uploads[-1].upload_id}</NextUploadIdMarker>")
    encoding = "<EncodingType>url</EncodingType>" if url_encode else ""
    delim = f"<Delimiter>{enc(delimiter)}</Delimiter>" if delimiter else ""
    return (f'{HEADER}<ListMultipartUploadsResult xmlns="{NS}"><Bucket>{esc(bucket)}</Bucket>'
            f"<KeyMarker>{enc(key_marker)}</KeyMarker><UploadIdMarker>{esc(upload_id_marker)}</UploadIdMarker>"
            f"{nxt}<Prefix>{enc(prefix)}</Prefix>{delim}<MaxUploads>{max_uploads}</MaxUploads>{encoding}"
            f"<IsTruncated>{'true' if truncated else 'false'}</IsTruncated>{items}"
            f"</ListMultipartUploadsResult>").encode()


def delete_result(deleted: list[str], failed: list[tuple[str, str, str]], quiet: bool) -> bytes:
    out = [f'{HEADER}<DeleteResult xmlns="{NS}">']
    if not quiet:
        out.extend(f"<Deleted><Key>{esc(k)}</Key></Deleted>" for k in deleted)
    out.extend(f"<Error><Key>{esc(k)}</Key><Code>{c}</Code><Message>{esc(m)}</Message></Error>" for k, c, m in failed)
    out.append("</DeleteResult>")
    return "".join(out).encode()


# request documents ---------------------------------------------------------------------------------------
def _parse(body: bytes) -> ET.Element:
    try:
        return SafeET.fromstring(body)
    except (ET.ParseError, DefusedXmlException, ValueError):
        raise errors.InvalidRequest("The XML you provided was not well-formed or did not validate against our "
                                    "published schema.", code="MalformedXML") from None


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _child_text(elem: ET.Element, name: str) -> str | None:
    for child in elem:
        if _local(child.tag) == name:
            return child.text or ""
    return None


def parse_create_bucket(body: bytes) -> str | None:
    """The LocationConstraint of a CreateBucketConfiguration, or None."""
    if not body.strip():
        return None
    root = _parse(body)
    if _local(root.tag) != "CreateBucketConfiguration":
        raise errors.InvalidRequest("The XML you provided was not well-formed or did not validate against our "
                                    "published schema.", code="MalformedXML")
    value = _child_text(root, "LocationConstraint")
    return value or None


def parse_delete(body: bytes) -> tuple[list[str], bool]:
    root = _parse(body)
    if _local(root.tag) != "Delete":
        raise errors.InvalidRequest("The XML you provided was not well-formed or did not validate against our "
                                    "published schema.", code="MalformedXML")
    quiet = (_child_text(root, "Quiet") or "").strip().lower() == "true"
    keys = []
    for obj in root:
        if _local(obj.tag) == "Object":
            key = _child_text(obj, "Key")
            if key is None:
                raise errors.InvalidRequest("Each Object must have a Key.", code="MalformedXML")
            keys.append(key)
    if not keys or len(keys) > 1000:
        raise errors.InvalidRequest("The request must contain between 1 and 1000 objects.", code="MalformedXML")
    return keys, quiet


def parse_complete(body: bytes) -> list[tuple[int, str, dict[str, str]]]:
    root = _parse(body)
    if _local(root.tag) != "CompleteMultipartUpload":
        raise errors.InvalidRequest("The XML you provided was not well-formed or did not validate against our "
                                    "published schema.", code="MalformedXML")
    parts = []
    for part in root:
        if _local(part.tag) != "Part":
            continue
        number_text = _child_text(part, "PartNumber")
        etag = _child_text(part, "ETag")
        number_text = number_text.strip() if number_text is not None else None
        if number_text is None or etag is None or not is_ascii_digits(number_text):
            raise errors.InvalidRequest("Each Part must have a PartNumber and an ETag.", code="MalformedXML")
        sums = {}
        for child in part:
            alg = _TAG_TO_ALG.get(_local(child.tag))
            if alg and child.text:
                sums[alg] = child.text.strip()
        parts.append((int(number_text), etag, sums))
    return parts
