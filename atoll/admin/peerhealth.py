"""Cold-endpoint health of every worker of ``atoll serve --workers N``, for the primary's status and /metrics.

Breakers, counters and rates live in each worker's memory (each worker talks to the cold stores for the clients
it serves), while the admin API runs in the primary worker only. So every other worker writes its endpoints'
views (atoll.admin.endpoints) to ``<data_dir>/run/health/<pid>.json``: at most once a second, when they changed,
and at least every ``HEARTBEAT`` seconds; an atomic replace, never fsynced (it describes the running processes
and means nothing after a restart). The primary merges them with its own view when asked.

A file is skipped, and removed, once its process is gone (a worker killed with SIGKILL cannot remove its own;
its replacement has another pid); skipped when older than ``STALE`` seconds (a worker whose event loop is stuck
says nothing about the link now) and removed when older than ``FORGOTTEN`` (left by an earlier run, its pid
reused). A worker that stops cleanly removes its file.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from typing import TYPE_CHECKING

from atoll.admin.endpoints import endpoint_view
from atoll.core.ingest import run_io
from atoll.core.tasks import cancel_and_wait
from atoll.processes import alive

if TYPE_CHECKING:
    from atoll.core.tiering.tier import Tiering

log = logging.getLogger("atoll.admin")

PUBLISH_INTERVAL = 1.0
HEARTBEAT = 5.0
STALE = 15.0
FORGOTTEN = 60.0  # a file this old is removed: a live worker rewrites its own every HEARTBEAT seconds


def health_dir(data_dir: str, node: str | None = None) -> str:
    """Where a node's workers publish their cold-endpoint views (``<data_dir>/run/<node>/health``)."""
    run = os.path.join(os.path.abspath(data_dir), "run")
    return os.path.join(run, node, "health") if node else os.path.join(run, "health")


class HealthPublisher:
    """Writes one worker's endpoint views for the primary."""

    def __init__(self, tier: "Tiering", directory: str) -> None:
        self.tier = tier
        self.directory = directory
        self.path = os.path.join(directory, f"{os.getpid()}.json")
        self._last = ""
        self._written = 0.0
        self._failing = False
        self._task: asyncio.Task | None = None

    def start(self) -> "HealthPublisher":
        self._task = asyncio.get_running_loop().create_task(self._run())
        return self

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(PUBLISH_INTERVAL)
            try:
                await self.publish()
            except OSError as exc:  # a full or read-only disk: status then shows the primary's view only
                if not self._failing:
                    log.warning("cannot write worker health to %s: %s", self.directory, exc.strerror)
                self._failing = True
            except Exception:  # noqa: BLE001 - the loop must outlive any one failure
                log.exception("publishing worker health failed")

    async def publish(self) -> None:
        views = [endpoint_view(endpoint) for endpoint in list(self.tier.endpoints.values())]
        text = json.dumps(views, sort_keys=True)
        now = time.time()
        if text == self._last and now - self._written < HEARTBEAT:
            return
        await run_io(self._write, json.dumps({"pid": os.getpid(), "written": now, "endpoints": views}))
        self._last, self._written, self._failing = text, now, False

    def _write(self, document: str) -> None:
        os.makedirs(self.directory, mode=0o700, exist_ok=True)
        temp = self.path + ".tmp"
        with open(temp, "w", encoding="utf-8") as f:
            f.write(document)
        os.replace(temp, self.path)

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        for path in (self.path, self.path + ".tmp"):
            try:
                os.unlink(path)
            except OSError:
                pass


def read_peer_views(directory: str, own_pid: int | None = None) -> list[list[dict]]:
    """The endpoint views published by the other live workers (blocking: call it through run_io)."""
    try:
        names = os.listdir(directory)
    except OSError:
        return []
    now = time.time()
    peers = []
    for name in names:
        stem, dot, ext = name.partition(".")
        if ext != "json" or not stem.isdigit() or int(stem) == own_pid:
            continue
        path = os.path.join(directory, name)
        if not alive(int(stem)):
            _remove(path)
            continue
        try:
            with open(path, encoding="utf-8") as f:
                document = json.load(f)
            age = now - float(document["written"])
            views = document["endpoints"]
        except (OSError, ValueError, TypeError, KeyError):
            continue
        if age > FORGOTTEN:  # an earlier run's file whose pid now belongs to another process
            _remove(path)
        if age > STALE or not isinstance(views, list):
            continue
        peers.append([v for v in views if isinstance(v, dict) and "endpoint" in v])
    return peers


def _remove(path: str) -> None:
    for leftover in (path, path + ".tmp"):
        try:
            os.unlink(leftover)
        except OSError:
            pass
