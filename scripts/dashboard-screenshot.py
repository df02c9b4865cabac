#!/usr/bin/env python3
"""Take the README's dashboard screenshot from a running Atoll with a WAN partition in progress.

    .venv/bin/python scripts/dashboard-screenshot.py [--out docs/img/dashboard-partition.png] [--keep]

What it does, in about a minute and a half: starts a moto S3 server (the cold store) and an Atoll (SQLite
metadata, the default) with two buckets linked to it through one FaultProxy relay (tests/coldstores.py), that is
one WAN link: `datasets` (cache mode) and `checkpoints` (write-back). It writes checkpoints (drained across the
WAN), stages and pins a dataset prefix, reads (misses first, then hits) for a while so that the charts have a
history, then cuts the WAN (the relay blackholed) and keeps writing checkpoints, which the drain journals. Once
the dashboard has shown the partition for a while, Chromium (Debian's, through Playwright, as in
tests/dashboard/) signs in and saves a full-page screenshot of the overview, 1400 px wide. Everything started is
stopped at the end; `--keep` leaves the data directories for a look.

Needs what `make test-deps` installs (the test extras, Debian's chromium and fonts). It reuses the test helpers
(tests/harness.py, tests/coldstores.py, tests/dashboard/dashutil.py) rather than a pytest run, so that its
output lands in docs/img/ and nowhere else.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO / "tests"), str(REPO / "tests" / "dashboard")]

from coldside import Cold, ColdSite, pattern  # noqa: E402
from coldstores import MotoS3Server  # noqa: E402
from dashutil import VIEWPORT, dashboard, launch_browser, link, sign_in, start_server, wait_drained  # noqa: E402
from harness import admin_call, wait_until  # noqa: E402

KiB, MiB = 1 << 10, 1 << 20
SAMPLE_INTERVAL = "1"  # one chart point a second: a two-minute history fits the charts' width


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


class Load(threading.Thread):
    """Reads and writes at a modest pace until stopped, so that the charts have something to show."""

    def __init__(self, server, datasets: str, keys: list[str], checkpoints: str) -> None:
        super().__init__(daemon=True)
        self.s3 = server.client()
        self.datasets, self.keys, self.checkpoints = datasets, keys, checkpoints
        self.writing = False
        self.stop = threading.Event()
        self.step = 0

    def run(self) -> None:
        while not self.stop.is_set():
            self.step += 1
            key = self.keys[self.step % len(self.keys)]
            try:
                self.s3.get_object(Bucket=self.datasets, Key=key)["Body"].read()
                if self.writing:
                    self.s3.put_object(Bucket=self.checkpoints, Key=f"run-7/step-{self.step:05d}/shard.bin",
                                       Body=pattern(512 * KiB, str(self.step)))
            except Exception as exc:  # noqa: BLE001 - a miss that waits on a cut link fails; the load goes on
                log(f"load: {type(exc).__name__}")
            self.stop.wait(0.1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(REPO / "docs" / "img" / "dashboard-partition.png"))
    parser.add_argument("--keep", action="store_true", help="keep the data directories")
    args = parser.parse_args()
    workdir = tempfile.mkdtemp(prefix="atoll-screenshot-", dir=os.environ.get("ATOLL_TEST_TMP", "/var/tmp"))
    moto = MotoS3Server(log_dir=workdir).start()
    site = ColdSite("s3", moto, "island")
    server = None
    load = None
    try:
        # Both prefixes behind one relay: one WAN link, one cold endpoint, as on an island with one cloud region.
        datasets_cold = site.cold("datasets")
        checkpoints_cold = Cold("s3", moto, site.container, datasets_cold.proxy, "checkpoints")
        server = start_server(workdir, ATOLL_DASHBOARD_SAMPLE_INTERVAL=SAMPLE_INTERVAL)
        datasets = link(server, datasets_cold, "cache", "datasets")
        checkpoints = link(server, checkpoints_cold, "writeback", "checkpoints")
        log(f"atoll up, dashboard at {server.admin_endpoint}")

        shards = [f"imagenet/train/shard-{i:03d}.tar" for i in range(48)]
        for i, key in enumerate(shards):
            datasets_cold.put(key, pattern(256 * KiB, key))
        s3 = server.client()
        for step in range(12):
            s3.put_object(Bucket=checkpoints, Key=f"run-7/step-{step:05d}/shard.bin", Body=pattern(1 * MiB, str(step)))
        job = admin_call(server, "POST", "/api/v1/jobs", {"kind": "stage", "bucket": datasets,
                                                          "prefix": "imagenet/train/shard-00", "pin": True})
        wait_until(lambda: admin_call(server, "GET", f"/api/v1/jobs/{job['id']}")["state"] == "done", 60,
                   "the staging job")
        wait_drained(server, 60)
        log("written, staged and drained; reading for a while")

        load = Load(server, datasets, shards, checkpoints)
        load.start()
        time.sleep(20)
        load.writing = True
        time.sleep(15)
        log("cutting the WAN")
        datasets_cold.proxy.blackhole()
        wait_until(lambda: dashboard(server)["banner"]["level"] == "critical", 60, "the dashboard to show it",
                   interval=0.5)
        time.sleep(30)  # the partition spans a good part of the charts
        log("taking the screenshot")
        shoot(server, Path(args.out))
        log(f"saved {args.out}")
        return 0
    finally:
        if load is not None:
            load.stop.set()
        for cold in site.proxies:
            cold.heal()
        if server is not None:
            server.stop()
        site.close()
        moto.stop()
        if args.keep:
            log(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def shoot(server, out: Path) -> None:
    from playwright.sync_api import sync_playwright

    out.parent.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = launch_browser(playwright)
        try:
            page = browser.new_page(viewport=VIEWPORT)
            errors: list[str] = []
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            sign_in(page, server)
            page.wait_for_function("() => Number(document.querySelector('#last-update')?.getAttribute('data-time'))"
                                   " > 0", timeout=10_000)
            time.sleep(2.5)  # two more refreshes: charts drawn at their full history
            page.screenshot(path=str(out), full_page=True)
            if errors:
                raise RuntimeError(f"the page reported errors: {errors}")
        finally:
            browser.close()


if __name__ == "__main__":
    sys.exit(main())
