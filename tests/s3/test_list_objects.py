"""ListObjects (v1) and ListObjectsV2 as clients rely on them: prefixes, delimiters, start-after, continuation
tokens, max-keys (0 included), KeyCount, CommonPrefixes counting toward max-keys, NextMarker only with a
delimiter in v1, fetch-owner, and encoding-type=url for keys XML cannot carry verbatim."""

from __future__ import annotations

import secrets
import xml.etree.ElementTree as ET
from urllib.parse import quote

import pytest
from s3util import failure, signed_request

KEYS = ["a", "a/b", "a/c/d", "a/c/e", "b c", "b+c", "b%c", "b%2Bc", "é/x", "é/y", "\U0001F600", "new\nline",
        "tab\there", "z/", "z//double", "Z-upper", "~tilde"]
NS = "{http://s3.amazonaws.com/doc/2006-03-01/}"


def utf8_order(keys):
    return sorted(keys, key=lambda k: k.encode())


def rolled_up(keys, prefix="", delimiter=""):
    """(keys, common prefixes) of a complete listing, in order."""
    contents, prefixes = [], []
    for key in utf8_order(k for k in keys if k.startswith(prefix)):
        at = key.find(delimiter, len(prefix)) if delimiter else -1
        if at >= 0:
            common = key[:at + len(delimiter)]
            if common not in prefixes:
                prefixes.append(common)
        else:
            contents.append(key)
    return contents, prefixes


@pytest.fixture(scope="module")
def listed(atoll):
    s3 = atoll.client()
    name = f"listing-semantics-{secrets.token_hex(3)}"
    s3.create_bucket(Bucket=name)
    for key in KEYS:
        s3.put_object(Bucket=name, Key=key, Body=key.encode())
    return name


def test_v2_lists_every_key_in_utf8_order(s3, listed):
    page = s3.list_objects_v2(Bucket=listed)
    assert [o["Key"] for o in page["Contents"]] == utf8_order(KEYS)
    assert page["KeyCount"] == len(KEYS) and not page["IsTruncated"]
    assert "NextContinuationToken" not in page and "CommonPrefixes" not in page
    first = page["Contents"][0]
    head = s3.head_object(Bucket=listed, Key=first["Key"])
    assert first["ETag"] == head["ETag"] and first["Size"] == head["ContentLength"]
    assert first["LastModified"] == head["LastModified"].replace(microsecond=first["LastModified"].microsecond)
    assert first["StorageClass"] == "STANDARD"
    assert "Owner" not in first
    owned = s3.list_objects_v2(Bucket=listed, FetchOwner=True, MaxKeys=1)["Contents"][0]
    assert owned["Owner"]["ID"]


@pytest.mark.parametrize("prefix, delimiter", [("", "/"), ("a/", "/"), ("a", "/"), ("", "c"), ("z/", "/"),
                                               ("é", "/"), ("b", ""), ("nothing", "/"), ("", "//")])
def test_v2_prefix_and_delimiter(s3, listed, prefix, delimiter):
    page = s3.list_objects_v2(Bucket=listed, Prefix=prefix, Delimiter=delimiter)
    contents, prefixes = rolled_up(KEYS, prefix, delimiter)
    assert [o["Key"] for o in page.get("Contents", [])] == contents
    assert [p["Prefix"] for p in page.get("CommonPrefixes", [])] == prefixes
    assert page["KeyCount"] == len(contents) + len(prefixes)
    assert page["Prefix"] == prefix
    assert page.get("Delimiter", "") == delimiter


@pytest.mark.parametrize("max_keys", [1, 2, 3])
def test_v2_pagination_counts_common_prefixes_toward_max_keys(s3, listed, max_keys):
    contents, prefixes = rolled_up(KEYS, "", "/")
    expected = utf8_order(contents + prefixes)
    seen, token, pages = [], None, 0
    while True:
        pages += 1
        kwargs = {"ContinuationToken": token} if token else {}
        page = s3.list_objects_v2(Bucket=listed, Delimiter="/", MaxKeys=max_keys, **kwargs)
        batch = [o["Key"] for o in page.get("Contents", [])] + [p["Prefix"] for p in page.get("CommonPrefixes", [])]
        assert page["KeyCount"] == len(batch) <= max_keys
        assert page["MaxKeys"] == max_keys
        if token:
            assert page["ContinuationToken"] == token
        seen += batch
        if not page["IsTruncated"]:
            assert "NextContinuationToken" not in page
            break
        assert len(batch) == max_keys
        token = page["NextContinuationToken"]
        assert pages <= len(expected)
    assert sorted(seen, key=str.encode) == expected and len(seen) == len(set(seen))
    assert pages == -(-len(expected) // max_keys)


def test_v2_start_after_applies_to_the_first_page_only(s3, listed):
    page = s3.list_objects_v2(Bucket=listed, StartAfter="a/c", MaxKeys=2)
    assert [o["Key"] for o in page["Contents"]] == ["a/c/d", "a/c/e"] and page["StartAfter"] == "a/c"
    more = s3.list_objects_v2(Bucket=listed, StartAfter="a/c", MaxKeys=2,
                              ContinuationToken=page["NextContinuationToken"])
    after = utf8_order(KEYS).index("a/c/e") + 1
    assert [o["Key"] for o in more["Contents"]] == utf8_order(KEYS)[after:after + 2]
    beyond = s3.list_objects_v2(Bucket=listed, StartAfter="\U0010FFFF")
    assert beyond["KeyCount"] == 0 and "Contents" not in beyond and not beyond["IsTruncated"]
    # A start-after inside a common prefix lists that prefix (its remaining keys roll up into it).
    inside = s3.list_objects_v2(Bucket=listed, Delimiter="/", StartAfter="a/b", MaxKeys=1)
    assert [p["Prefix"] for p in inside["CommonPrefixes"]] == ["a/"]


def test_max_keys_zero(s3, listed):
    for page in (s3.list_objects_v2(Bucket=listed, MaxKeys=0), s3.list_objects(Bucket=listed, MaxKeys=0)):
        assert "Contents" not in page and "CommonPrefixes" not in page
        assert not page["IsTruncated"] and page["MaxKeys"] == 0
        assert "NextContinuationToken" not in page and "NextMarker" not in page
    assert s3.list_objects_v2(Bucket=listed, MaxKeys=0)["KeyCount"] == 0


def test_max_keys_is_capped_at_1000(s3, listed):
    assert s3.list_objects_v2(Bucket=listed, MaxKeys=5000)["MaxKeys"] == 1000


def test_v1_marker_and_next_marker(s3, listed):
    page = s3.list_objects(Bucket=listed, MaxKeys=3)
    assert [o["Key"] for o in page["Contents"]] == utf8_order(KEYS)[:3]
    assert page["IsTruncated"] and "NextMarker" not in page  # no delimiter: clients use the last key
    assert page["Contents"][0]["Owner"]["ID"]  # v1 always names the owner
    rest = s3.list_objects(Bucket=listed, Marker=page["Contents"][-1]["Key"])
    assert [o["Key"] for o in rest["Contents"]] == utf8_order(KEYS)[3:] and not rest["IsTruncated"]
    assert rest["Marker"] == page["Contents"][-1]["Key"]

    contents, prefixes = rolled_up(KEYS, "", "/")
    expected = utf8_order(contents + prefixes)
    seen, marker = [], ""
    for _ in range(len(expected)):
        page = s3.list_objects(Bucket=listed, Delimiter="/", MaxKeys=2, Marker=marker)
        batch = utf8_order([o["Key"] for o in page.get("Contents", [])] +
                           [p["Prefix"] for p in page.get("CommonPrefixes", [])])
        seen += batch
        if not page["IsTruncated"]:
            assert "NextMarker" not in page
            break
        assert page["NextMarker"] == batch[-1]  # with a delimiter, NextMarker may name a common prefix
        marker = page["NextMarker"]
    assert seen == expected


def _raw_list(atoll, bucket, query: str) -> ET.Element:
    raw = signed_request(atoll, "GET", f"/{bucket}", query=query)
    assert raw.status == 200, raw.body
    return ET.fromstring(raw.body)


def test_encoding_type_url_encodes_keys_and_says_so(atoll, listed):
    root = _raw_list(atoll, listed, "encoding-type=url&list-type=2&prefix=b")
    assert root.find(f"{NS}EncodingType").text == "url"
    keys = [c.find(f"{NS}Key").text for c in root.iter(f"{NS}Contents")]
    assert keys == [quote(k, safe="/") for k in utf8_order(["b c", "b+c", "b%c", "b%2Bc"])]
    assert "b%2Bc" in keys and "b%20c" in keys and "b%25c" in keys and "b%252Bc" in keys

    root = _raw_list(atoll, listed, "delimiter=%2F&encoding-type=url&list-type=2&prefix=%C3%A9")
    assert root.find(f"{NS}Prefix").text == "%C3%A9"
    assert [p.find(f"{NS}Prefix").text for p in root.iter(f"{NS}CommonPrefixes")] == ["%C3%A9/"]

    root = _raw_list(atoll, listed, "encoding-type=url&list-type=2&prefix=new")
    assert [c.find(f"{NS}Key").text for c in root.iter(f"{NS}Contents")] == ["new%0Aline"]


def test_without_encoding_type_keys_are_xml_escaped(atoll, listed):
    root = _raw_list(atoll, listed, "list-type=2&prefix=b")
    assert root.find(f"{NS}EncodingType") is None
    assert [c.find(f"{NS}Key").text for c in root.iter(f"{NS}Contents")] == utf8_order(["b c", "b+c", "b%c", "b%2Bc"])
    root = _raw_list(atoll, listed, "prefix=%F0%9F%98%80")  # v1, unicode prefix
    assert [c.find(f"{NS}Key").text for c in root.iter(f"{NS}Contents")] == ["\U0001F600"]


def test_boto3_round_trips_every_odd_key_through_url_encoding(s3, listed):
    # boto3 always asks for encoding-type=url and unquote_plus()es what comes back.
    assert [o["Key"] for o in s3.list_objects_v2(Bucket=listed)["Contents"]] == utf8_order(KEYS)
    assert [o["Key"] for o in s3.list_objects(Bucket=listed)["Contents"]] == utf8_order(KEYS)
    page = s3.list_objects_v2(Bucket=listed, Prefix="b+", StartAfter="b ")
    assert [o["Key"] for o in page["Contents"]] == ["b+c"]
    assert page["Prefix"] == "b+" and page["StartAfter"] == "b "


def test_listing_argument_errors(s3, atoll, listed):
    assert failure(s3.list_objects_v2, Bucket=listed, ContinuationToken="!!not-a-token!!").code == "InvalidArgument"
    raw = signed_request(atoll, "GET", f"/{listed}", query="encoding-type=base64&list-type=2")
    assert raw.status == 400 and b"InvalidArgument" in raw.body
    raw = signed_request(atoll, "GET", f"/{listed}", query="list-type=2&max-keys=-1")
    assert raw.status == 400 and b"InvalidArgument" in raw.body
    assert failure(s3.list_objects_v2, Bucket="no-such-bucket-here").code == "NoSuchBucket"
