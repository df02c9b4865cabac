"""The cluster runtime (#9): which nodes are alive, whose work may be taken over, and who runs singleton tasks.

Nodes are stateless ``atoll serve`` processes sharing one metadata store and one data directory
(docs/cluster.md). Each node has a name (config ``node``, default ``<hostname>-<s3 port>``) and, in its primary
worker, a heartbeat task that upserts its ``nodes`` row every ``heartbeat_interval`` seconds. A node is alive
while that row is fresher than ``node_timeout`` and not marked stopped.

Owners of shared work (segments, compactions, jobs, fills, cluster leases) are ``"node:pid:start"`` strings.
``owner_alive`` answers for one: a process of this node by its pid and start time (exact and immediate, as on a
single node), a process of another node by that node's heartbeat (its own start-up and housekeeping clean up
after its dead processes).

Singleton background work (eviction rounds, garbage collection, leftover clean-up, compaction housekeeping) runs
where ``hold(name)`` says: it takes or renews a row of ``cluster_leases`` for ``node_timeout`` seconds, so one
node at a time does it and a dead holder's lease lapses to another. A node alone (one process, no live peer)
takes no lease: that costs nothing on the embedded single-node default.

Cluster-wide rate limits: ``share()`` is this node's fraction of a cluster-wide limit, 1 / live nodes.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from typing import Any, Callable

from atoll import __version__ as _VERSION  # noqa: N812
from atoll.core.tasks import cancel_and_wait
from atoll.stores.meta.sql_cluster import NodeRecord

log = logging.getLogger("atoll.cluster")

NODE_TIMEOUT = 10.0
HEARTBEAT_INTERVAL = 2.0
LIVE_CACHE_SECONDS = 1.0
PRUNE_AFTER = 3600.0  # a node dead this long leaves the nodes table (and `atoll status`)

_node = socket.gethostname()
_current: "Cluster | None" = None


def node_name() -> str:
    """This process's node name (the host name until ``configure`` names it)."""
    return _node


def configure(node: str) -> None:
    """Name this process's node: owners it writes become ``node:pid:start``; temp files carry its tag."""
    global _node
    from atoll.stores.data import files

    _node = node
    files.set_node(node)


def current() -> "Cluster | None":
    return _current


def share() -> float:
    """This node's share of a cluster-wide limit (QoS rates, WAN caps): 1 / live nodes, 1.0 alone."""
    cluster = _current
    return 1.0 / cluster.live_count if cluster is not None and cluster.live_count > 1 else 1.0


def split_owner(owner: str) -> tuple[str, int | None, str]:
    """(node, pid, start) of a ``node:pid:start`` owner; a node name may itself hold ':' only in the oldest
    formats, so the pid and start are taken from the right."""
    node, _, rest = owner.partition(":")
    pid, _, start = rest.partition(":")
    return node, int(pid) if pid.isdigit() else None, start


class Cluster:
    """One process's view of the cluster: its node, the live nodes (cached ``LIVE_CACHE_SECONDS``), leases."""

    def __init__(self, meta, node: str, *, node_timeout: float = NODE_TIMEOUT,
                 heartbeat_interval: float = HEARTBEAT_INTERVAL, workers: int = 1) -> None:
        self.meta = meta
        self.node = node
        self.node_timeout = node_timeout
        self.heartbeat_interval = heartbeat_interval
        self.workers = workers
        self._nodes: list[NodeRecord] = []
        self._nodes_at = -LIVE_CACHE_SECONDS
        self._refreshing: asyncio.Future | None = None
        self.live_count = 1
        self._held: set[str] = set()  # cluster leases this process holds (renewed by hold())
        self._task: asyncio.Task | None = None
        self.info: Callable[[], dict[str, Any]] = dict  # what the heartbeat publishes (set by the server)
        self.address = ""
        self.started = time.time()

    # liveness ------------------------------------------------------------------------------------------
    def is_live(self, record: NodeRecord, now: float | None = None) -> bool:
        now = time.time() if now is None else now
        return now - record.heartbeat < self.node_timeout and not record.info.get("stopped")

    async def nodes(self, fresh: bool = False) -> list[NodeRecord]:
        """Every node's row (cached for ``LIVE_CACHE_SECONDS`` unless ``fresh``)."""
        if fresh or time.monotonic() - self._nodes_at >= LIVE_CACHE_SECONDS:
            if self._refreshing is not None:
                await asyncio.shield(self._refreshing)
            else:
                self._refreshing = asyncio.get_running_loop().create_future()
                try:
                    self._nodes = await self.meta.list_nodes()
                    self._nodes_at = time.monotonic()
                    now = time.time()
                    self.live_count = max(1, sum(1 for n in self._nodes if self.is_live(n, now)))
                finally:
                    self._refreshing.set_result(None)
                    self._refreshing = None
        return self._nodes

    async def live_nodes(self) -> list[NodeRecord]:
        now = time.time()
        return [n for n in await self.nodes() if self.is_live(n, now)]

    async def node_alive(self, node: str) -> bool:
        if node == self.node:
            return True
        now = time.time()
        return any(n.node == node and self.is_live(n, now) for n in await self.nodes())

    async def owner_alive(self, owner: str) -> bool:
        """Whether the process named by ``owner`` ("node:pid:start") may still be doing its work."""
        node, pid, start = split_owner(owner)
        if node == self.node:
            return pid is not None and process_alive(pid, start)
        return await self.node_alive(node)

    async def peers_alive(self) -> bool:
        """Whether another node is alive now (asked afresh, not from the cache)."""
        now = time.time()
        return any(n.node != self.node and self.is_live(n, now) for n in await self.nodes(fresh=True))

    def alone(self) -> bool:
        """One process and no live peer (as last seen): singleton work needs no lease."""
        return self.workers == 1 and self.live_count <= 1

    # leases ----------------------------------------------------------------------------------------------
    async def hold(self, name: str, owner: str) -> bool:
        """Take or renew the cluster lease ``name`` for this round of a singleton task; False while another
        process holds it."""
        await self.nodes()
        if self.alone() and name not in self._held:
            return True
        held = await self.meta.claim_cluster_lease(name, owner, self.node_timeout)
        if held:
            self._held.add(name)
        else:
            self._held.discard(name)
        return held

    async def release_all(self, owner: str) -> None:
        for name in sorted(self._held):
            try:
                await self.meta.release_cluster_lease(name, owner)
            except Exception:  # noqa: BLE001 - it lapses anyway
                pass
        self._held.clear()

    # heartbeat ---------------------------------------------------------------------------------------------
    def record(self, *, stopped: bool = False) -> NodeRecord:
        info = {"version": _VERSION, "pid": os.getpid(), "workers": self.workers}
        try:
            info.update(self.info())
        except Exception:  # noqa: BLE001 - a heartbeat without details is better than none
            log.exception("collecting heartbeat details failed")
        if stopped:
            info["stopped"] = True
        return NodeRecord(self.node, self.address, self.started, time.time(), info)

    async def beat(self, *, stopped: bool = False) -> None:
        await self.meta.heartbeat_node(self.record(stopped=stopped))

    def start_heartbeat(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._heartbeat_loop())

    async def _heartbeat_loop(self) -> None:
        pruned_at = 0.0
        while True:
            try:
                await self.beat()
                if time.monotonic() - pruned_at > 60.0:
                    pruned_at = time.monotonic()
                    await self._prune()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - a missed beat is retried; enough of them and peers take over
                log.warning("heartbeat of node %s failed: %s", self.node, exc)
            await asyncio.sleep(self.heartbeat_interval)

    async def _prune(self) -> None:
        now = time.time()
        for record in await self.meta.list_nodes():
            if record.node != self.node and now - record.heartbeat > PRUNE_AFTER:
                if await self.meta.forget_node(record.node, now - PRUNE_AFTER):
                    log.info("node %s has been dead for over %ds: forgotten", record.node, PRUNE_AFTER)
        # Leases whose holders vanished without releasing them (fills of a killed node, ...).
        await self.meta.prune_cluster_leases(now - 60.0)

    async def stop(self, owner: str | None = None) -> None:
        """Stop the heartbeat and say the node stopped, so that peers take its work over at once."""
        await cancel_and_wait(self._task)
        self._task = None
        if owner is not None:
            await self.release_all(owner)


def start(cluster: Cluster) -> Cluster:
    """Make ``cluster`` this process's cluster view (``current()``, ``share()``)."""
    global _current
    _current = cluster
    return cluster


async def hold_singleton(name: str) -> bool:
    """Whether this process runs this round of the singleton task ``name`` (always, without a cluster)."""
    cluster = _current
    return True if cluster is None else await cluster.hold(name, process_owner())


def _start_ticks(pid: int) -> str | None:
    """A process's start time in clock ticks since boot (/proc), which tells a live process from a later one
    that got the same pid."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    return stat[stat.rindex(b")") + 2:].split()[19].decode()


_owner: tuple[int, str, str] = (0, "", "")  # (pid, node, owner): a forked worker or a renamed node makes a new one


def process_owner() -> str:
    """This process as an owner of shared work: "node:pid:start"."""
    global _owner
    pid = os.getpid()
    if _owner[0] != pid or _owner[1] != _node:
        _owner = (pid, _node, f"{_node}:{pid}:{_start_ticks(pid) or 0}")
    return _owner[2]


def process_alive(pid: int, start: str) -> bool:
    """Whether process ``pid`` of this host, started at ``start`` (clock ticks), still runs."""
    return _start_ticks(pid) == start


async def owner_alive(owner: str) -> bool:
    """``Cluster.owner_alive`` of this process's cluster; without one (CLI tools, a bare namespace), a process of
    this node by its pid, and any other node's process as alive (only its lease tells)."""
    cluster = _current
    if cluster is not None:
        return await cluster.owner_alive(owner)
    node, pid, start = split_owner(owner)
    if node != _node:
        return True
    return pid is not None and process_alive(pid, start)
