"""Fill a bucket with many zero-byte objects for the ListObjectsV2 benchmark.

Atoll: straight into its metadata store, in-process, through ``atoll.benchsupport.bulk_insert_empty_objects``
(PUTting 1,000,000 objects over HTTP would take far longer than the benchmark itself).
Any S3 server (moto, or a small Atoll bucket when benchsupport is missing): PutObject over HTTP, bounded.

CLI (used by bench.main in a subprocess, so a crash in the store cannot take the harness down):
    python -m bench.populate --data-dir DIR --bucket NAME --n 1000000
"""
from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from typing import Iterable, Iterator


def dataset_key(i: int) -> str:
    return f"train/shard-{i // 1000:05d}/sample-{i:07d}.jpg"


def dataset_keys(n: int) -> Iterator[str]:
    """Keys shaped like a training set, already in listing order: 1,000 samples per shard."""
    return (dataset_key(i) for i in range(n))


def benchsupport_available() -> bool:
    try:
        import atoll.benchsupport as bs
    except Exception:  # noqa: BLE001 - any import failure means "not there yet"
        return False
    return callable(getattr(bs, "bulk_insert_empty_objects", None))


def populate_atoll_index(data_dir: str, bucket: str, n: int) -> None:
    """Insert n zero-byte objects (dataset_keys) into Atoll's metadata store at data_dir, bucket already created."""
    from atoll.benchsupport import bulk_insert_empty_objects
    bulk_insert_empty_objects(data_dir, bucket, dataset_keys(n))


def populate_via_s3(client, bucket: str, keys: Iterable[str], threads: int = 8, max_seconds: float = 300.0) -> int:
    """PutObject each key with an empty body from a few threads. Stops at max_seconds; returns how many were put."""
    it = iter(keys)
    lock = threading.Lock()
    done = [0]
    errors: list[str] = []
    deadline = time.monotonic() + max_seconds

    def worker():
        while time.monotonic() < deadline and not errors:
            with lock:
                key = next(it, None)
            if key is None:
                return
            try:
                client.put_object(Bucket=bucket, Key=key, Body=b"")
            except Exception as e:  # noqa: BLE001
                errors.append(f"{key}: {e}")
                return
            with lock:
                done[0] += 1

    ts = [threading.Thread(target=worker, daemon=True) for _ in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(max_seconds + 30)
    if errors:
        raise RuntimeError(f"PutObject failed after {done[0]} objects: {errors[0][:300]}")
    return done[0]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", required=True)
    ap.add_argument("--bucket", required=True)
    ap.add_argument("--n", type=int, required=True)
    a = ap.parse_args(argv)
    t0 = time.perf_counter()
    populate_atoll_index(a.data_dir, a.bucket, a.n)
    dt = time.perf_counter() - t0
    print(json.dumps({"n": a.n, "secs": round(dt, 2), "rows_per_s": round(a.n / dt) if dt else None}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
