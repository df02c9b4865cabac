"""Lean ListObjectsV2 client: one keep-alive http.client connection, SigV4 header signing with botocore's
signer, and a regex parse of the XML (keys, IsTruncated, NextContinuationToken). Lists a whole bucket in pages
of --page keys, bounded by --max-pages and --max-seconds, and checks count and order.
Prints one JSON line: {keys, pages, secs, cpu, keys_per_s, ok, problem}. cpu excludes imports.
"""
import argparse
import http.client
import json
import re
import time
from urllib.parse import quote
from xml.sax.saxutils import unescape

from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

ap = argparse.ArgumentParser()
ap.add_argument("--endpoint", required=True)  # http://127.0.0.1:PORT
ap.add_argument("--bucket", required=True)
ap.add_argument("--ak", required=True)
ap.add_argument("--sk", required=True)
ap.add_argument("--region", default="us-east-1")
ap.add_argument("--page", type=int, default=1000)
ap.add_argument("--expect", type=int, default=None)
ap.add_argument("--max-pages", type=int, default=2000)
ap.add_argument("--max-seconds", type=float, default=120)
a = ap.parse_args()

KEY = re.compile(rb"<Key>([^<]*)</Key>")
TRUNC = re.compile(rb"<IsTruncated>(true|false)</IsTruncated>")
TOKEN = re.compile(rb"<NextContinuationToken>([^<]*)</NextContinuationToken>")
signer = S3SigV4Auth(Credentials(a.ak, a.sk), "s3", a.region)
host, port = a.endpoint.split("//", 1)[1].split(":")


def text(b):
    s = b.decode()
    return unescape(s, {"&quot;": '"', "&apos;": "'"}) if "&" in s else s


c0, t0 = time.process_time(), time.perf_counter()
conn = http.client.HTTPConnection(host, int(port), timeout=60)
token, keys, pages, last, problem = None, 0, 0, b"", None
deadline = t0 + a.max_seconds
while pages < a.max_pages and time.perf_counter() < deadline:
    q = f"list-type=2&max-keys={a.page}"
    if token is not None:
        q += "&continuation-token=" + quote(token, safe="-_.~")
    target = f"/{a.bucket}?{q}"
    req = AWSRequest(method="GET", url=a.endpoint + target)
    signer.add_auth(req)
    conn.request("GET", target, headers=dict(req.headers.items()))
    r = conn.getresponse()
    body = r.read()
    if r.status != 200:
        problem = f"HTTP {r.status}: {body[:300]!r}"
        break
    page = KEY.findall(body)
    pages += 1
    keys += len(page)
    if page:
        if not (last < page[0] and all(x < y for x, y in zip(page, page[1:]))):
            problem = problem or f"keys out of order near {page[0][:80]!r}"
        last = page[-1]
    m = TRUNC.search(body)
    if not m or m.group(1) == b"false":
        token = None
        break
    t = TOKEN.search(body)
    if not t:
        problem = "IsTruncated=true without NextContinuationToken"
        break
    token = text(t.group(1))
else:
    problem = problem or f"stopped at the bound ({pages} pages, {time.perf_counter() - t0:.1f}s)"
conn.close()
dt, cpu = time.perf_counter() - t0, time.process_time() - c0
if problem is None and a.expect is not None and keys != a.expect:
    problem = f"listed {keys} keys, expected {a.expect}"
print(json.dumps({"keys": keys, "pages": pages, "secs": dt, "cpu": cpu, "keys_per_s": keys / dt if dt else None,
                  "ok": problem is None, "problem": problem}))
