"""The noisy neighbour of the ``noisy`` row: CONNS keep-alive connections GET one presigned URL for DURATION
seconds; after a refusal (503) a connection waits BACKOFF_MS and asks again, so the tenant sits at its limit all
the time. Prints one JSON line: answers served and refused, bytes received, CPU seconds spent.

usage: noisy.py URL DURATION CONNS BACKOFF_MS
"""

from __future__ import annotations

import http.client
import json
import sys
import threading
import time
from urllib.parse import urlsplit


def main() -> None:
    url, duration, conns, backoff = sys.argv[1], float(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]) / 1000
    parts = urlsplit(url)
    path = f"{parts.path}?{parts.query}"
    counts = {"served": 0, "refused": 0, "bytes": 0, "other": 0}
    lock = threading.Lock()
    end = time.monotonic() + duration

    def loop() -> None:
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
        mine = {"served": 0, "refused": 0, "bytes": 0, "other": 0}
        while time.monotonic() < end:
            conn.request("GET", path)
            response = conn.getresponse()
            data = response.read()
            if response.status == 200:
                mine["served"] += 1
                mine["bytes"] += len(data)
            elif response.status == 503:
                mine["refused"] += 1
                time.sleep(backoff)
            else:
                mine["other"] += 1
        with lock:
            for name, value in mine.items():
                counts[name] += value

    threads = [threading.Thread(target=loop) for _ in range(conns)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    counts["cpu"] = time.process_time()
    print(json.dumps(counts))


if __name__ == "__main__":
    main()
