"""botocore (boto3) ListObjectsV2 paginator, pages of 1,000 keys, for comparison with the lean client.
botocore spends ~200 ms of CPU per 1,000-key page (XML + LastModified parsing), so runs are capped by
--max-seconds / --max-pages. Prints one JSON line: {keys, pages, secs, cpu, keys_per_s, ok, problem}.
cpu excludes imports and client creation."""
import argparse
import json
import time

import boto3
from botocore.config import Config

ap = argparse.ArgumentParser()
ap.add_argument("--endpoint", required=True)
ap.add_argument("--bucket", required=True)
ap.add_argument("--ak", required=True)
ap.add_argument("--sk", required=True)
ap.add_argument("--region", default="us-east-1")
ap.add_argument("--max-pages", type=int, default=1000)
ap.add_argument("--max-seconds", type=float, default=15)
a = ap.parse_args()
c = boto3.client("s3", endpoint_url=a.endpoint, aws_access_key_id=a.ak, aws_secret_access_key=a.sk,
                 region_name=a.region, config=Config(signature_version="s3v4", s3={"addressing_style": "path"},
                                                     retries={"max_attempts": 1}))
c0, t0 = time.process_time(), time.perf_counter()
keys = pages = 0
problem = None
try:
    for page in c.get_paginator("list_objects_v2").paginate(Bucket=a.bucket, PaginationConfig={"PageSize": 1000}):
        pages += 1
        keys += len(page.get("Contents", ()))
        if pages >= a.max_pages or time.perf_counter() - t0 > a.max_seconds:
            break
except Exception as e:  # noqa: BLE001
    problem = repr(e)[:300]
dt, cpu = time.perf_counter() - t0, time.process_time() - c0
print(json.dumps({"keys": keys, "pages": pages, "secs": dt, "cpu": cpu, "keys_per_s": keys / dt if dt else None,
                  "ok": problem is None, "problem": problem}))
