"""Upload one file with azure-storage-blob's own BlobClient.upload_blob (staged blocks of --block bytes,
--conc in parallel, then Put Block List) through a SAS URL. This measures the SDK as much as the server.
Prints one JSON line: {ok, bytes, secs, cpu, gbps, problem}. cpu = this process during the upload (imports
excluded).
"""
import argparse
import json
import os
import time

from azure.storage.blob import BlobClient

ap = argparse.ArgumentParser()
ap.add_argument("url", help="the blob's SAS URL (write permission)")
ap.add_argument("path")
ap.add_argument("--block", type=int, default=8 << 20)
ap.add_argument("--conc", type=int, default=4)
a = ap.parse_args()
size = os.path.getsize(a.path)
# max_single_put_size below the file size, so even a QUICK-sized file goes up as blocks
client = BlobClient.from_blob_url(a.url, max_block_size=a.block, max_single_put_size=a.block,
                                  connection_timeout=10, read_timeout=120, retry_total=0)
c0, t0 = time.process_time(), time.perf_counter()
try:
    with open(a.path, "rb") as f:
        client.upload_blob(f, length=size, overwrite=True, max_concurrency=a.conc)
except Exception as e:  # noqa: BLE001 - reported to the driver as a failed run
    print(json.dumps({"ok": False, "problem": f"{type(e).__name__}: {str(e)[:400]}"}))
    raise SystemExit(0)
secs, cpu = time.perf_counter() - t0, time.process_time() - c0
print(json.dumps({"ok": True, "problem": "", "bytes": size, "secs": secs, "cpu": cpu, "gbps": size / secs / 1e9}))
