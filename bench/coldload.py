"""Put the tiering benchmarks' cold data sets into Azurite, or check that a cached one is still there.

Run by bench.tiering in a subprocess (`python -m bench.coldload ...`), so the driver never loads obstore. A data set
is `count` objects of `size` bytes under `prefix/`, each a slice of the source file (bench.tiering.slice_offset),
so any byte of any object can be checked against the source file later. Uploads run `--conc` at a time; objects
larger than 8 MiB go up as block lists (multipart) read from the file in 8 MiB chunks, never whole in memory.

    python -m bench.coldload --endpoint http://127.0.0.1:PORT/devstoreaccount1 --account devstoreaccount1 \
        --container atollbench --src FILE --prefix P --count N --size S [--check-only] [--force]

Account key in the environment variable BENCH_AZURE_KEY. Prints one JSON line: {ok, present, uploaded, secs, problem}.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time

PART = 8 << 20


def object_key(prefix: str, i: int) -> str:
    return f"{prefix}/obj-{i:05d}.bin"


def _chunks(path: str, offset: int, size: int):
    with open(path, "rb") as f:
        f.seek(offset)
        left = size
        while left:
            data = f.read(min(PART, left))
            if not data:
                raise RuntimeError(f"{path} ended early")
            left -= len(data)
            yield data


async def _run(a) -> dict:
    import obstore
    from obstore.store import AzureStore

    from bench.tiering import slice_offset

    key = os.environ["BENCH_AZURE_KEY"]
    _ensure_container(a.endpoint, a.account, key, a.container)
    store = AzureStore(a.container, config={"account_name": a.account, "account_key": key, "endpoint": a.endpoint},
                       client_options={"allow_http": True})
    listed = {m["path"]: int(m["size"]) for batch in obstore.list(store, a.prefix, chunk_size=1000) for m in batch}
    wanted = [object_key(a.prefix, i) for i in range(a.count)]
    missing = [i for i, k in enumerate(wanted) if a.force or listed.get(k) != a.size]
    extra = sorted(set(listed) - set(wanted))
    if a.check_only or not missing:
        return {"ok": True, "present": not missing and not extra, "missing": len(missing), "extra": len(extra),
                "uploaded": 0, "secs": 0.0}
    for k in extra:  # a data set of another shape under the same prefix would confuse both readers
        await obstore.delete_async(store, k)
    src_size = os.path.getsize(a.src)
    limit = asyncio.Semaphore(a.conc)
    t0 = time.perf_counter()

    async def put(i: int) -> None:
        async with limit:
            offset = slice_offset(i, a.size, src_size)
            if a.size <= PART:
                with open(a.src, "rb") as f:
                    f.seek(offset)
                    data = f.read(a.size)
                await obstore.put_async(store, object_key(a.prefix, i), data)
            else:
                await obstore.put_async(store, object_key(a.prefix, i), _chunks(a.src, offset, a.size),
                                        use_multipart=True, chunk_size=PART, max_concurrency=4)

    await asyncio.gather(*(put(i) for i in missing))
    return {"ok": True, "present": True, "missing": 0, "extra": 0, "uploaded": len(missing),
            "secs": time.perf_counter() - t0}


def _ensure_container(endpoint: str, account: str, key: str, container: str) -> None:
    from azure.core.exceptions import ResourceExistsError
    from azure.storage.blob import BlobServiceClient

    conn = f"DefaultEndpointsProtocol=http;AccountName={account};AccountKey={key};BlobEndpoint={endpoint};"
    try:
        BlobServiceClient.from_connection_string(conn).create_container(container)
    except ResourceExistsError:
        pass


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--endpoint", required=True)
    ap.add_argument("--account", required=True)
    ap.add_argument("--container", required=True)
    ap.add_argument("--src", required=True)
    ap.add_argument("--prefix", required=True)
    ap.add_argument("--count", type=int, required=True)
    ap.add_argument("--size", type=int, required=True)
    ap.add_argument("--conc", type=int, default=8)
    ap.add_argument("--check-only", action="store_true")
    ap.add_argument("--force", action="store_true", help="upload every object again (the source file changed)")
    a = ap.parse_args()
    try:
        out = asyncio.run(_run(a))
    except Exception as e:  # noqa: BLE001 - reported to the driver
        out = {"ok": False, "problem": f"{type(e).__name__}: {e}"[:500]}
    sys.stdout.write(json.dumps(out) + "\n")
    sys.stdout.flush()
    os._exit(0)  # skip interpreter teardown: obstore's runtime can abort while it is torn down


if __name__ == "__main__":
    main()
