"""Direct reads from the cold store with obstore (the reference of the tiering rows): the whole object(s) streamed
with `get_async`, bytes discarded.

    --key K                       one object, one streaming GET (the `cold1` reference)
    --prefix P --conc N           list P, then N concurrent streaming GETs over its objects (the `stage` reference;
                                  the listing is part of the time, as it is part of a staging job)
    --to-file PATH                with --key: write the bytes to a new file PATH instead, fdatasync at the end (what
                                  any warm tier must at least do; informational)

The store is Azure (Azurite): --endpoint http://127.0.0.1:PORT/ACCOUNT --account A --container C, key in the
environment variable BENCH_AZURE_KEY. Prints one JSON line:
{ok, bytes, objects, secs, list_secs, gbps, cpu, problem}; cpu = this process during the transfer (imports excluded).
"""
import argparse
import asyncio
import json
import os
import sys
import time

import obstore
from obstore.store import AzureStore

ap = argparse.ArgumentParser()
ap.add_argument("--endpoint", required=True)
ap.add_argument("--account", required=True)
ap.add_argument("--container", required=True)
ap.add_argument("--key")
ap.add_argument("--prefix")
ap.add_argument("--conc", type=int, default=16)
ap.add_argument("--expect-bytes", type=int, default=-1)
ap.add_argument("--expect-objects", type=int, default=-1)
ap.add_argument("--to-file")
a = ap.parse_args()

store = AzureStore(a.container, config={"account_name": a.account, "account_key": os.environ["BENCH_AZURE_KEY"],
                                        "endpoint": a.endpoint}, client_options={"allow_http": True})


async def read_one(key: str) -> int:
    n = 0
    result = await obstore.get_async(store, key)
    async for chunk in result.stream():
        n += len(chunk)
    return n


async def read_to_file(key: str, path: str) -> int:
    n = 0
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        result = await obstore.get_async(store, key)
        async for chunk in result.stream():
            view = memoryview(chunk)
            while view:
                view = view[os.write(fd, view):]
            n += len(chunk)
        os.fdatasync(fd)
    finally:
        os.close(fd)
    return n


async def main() -> dict:
    c0, t0 = time.process_time(), time.perf_counter()
    list_secs = 0.0
    if a.key:
        total, objects = await (read_to_file(a.key, a.to_file) if a.to_file else read_one(a.key)), 1
    else:
        keys = [m["path"] for batch in obstore.list(store, a.prefix, chunk_size=1000) for m in batch]
        list_secs = time.perf_counter() - t0
        queue: asyncio.Queue = asyncio.Queue()
        for k in keys:
            queue.put_nowait(k)
        counts: list[int] = []

        async def worker() -> None:
            while not queue.empty():
                counts.append(await read_one(queue.get_nowait()))
        await asyncio.gather(*(worker() for _ in range(max(1, a.conc))))
        total, objects = sum(counts), len(counts)
    secs, cpu = time.perf_counter() - t0, time.process_time() - c0
    problem = None
    if a.expect_bytes >= 0 and total != a.expect_bytes:
        problem = f"read {total} bytes, expected {a.expect_bytes}"
    if a.expect_objects >= 0 and objects != a.expect_objects:
        problem = f"read {objects} objects, expected {a.expect_objects}"
    return {"ok": problem is None, "bytes": total, "objects": objects, "secs": secs, "list_secs": list_secs,
            "gbps": total / secs / 1e9 if secs else 0.0, "cpu": cpu, "problem": problem}


try:
    out = asyncio.run(main())
except Exception as e:  # noqa: BLE001 - reported as a failed run
    out = {"ok": False, "bytes": 0, "objects": 0, "secs": 0, "list_secs": 0, "gbps": 0, "cpu": 0,
           "problem": f"{type(e).__name__}: {e}"[:400]}
sys.stdout.write(json.dumps(out) + "\n")
sys.stdout.flush()
os._exit(0)  # skip interpreter teardown: obstore's runtime can abort while it is torn down
