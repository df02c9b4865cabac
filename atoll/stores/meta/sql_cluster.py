"""The cluster's rows in the metadata store (#9): node heartbeats and leases of cluster-wide work.

``nodes`` has one row per ``atoll serve`` node, upserted by its heartbeat; a node is alive while its heartbeat is
recent (atoll.core.cluster decides what recent means). ``cluster_leases`` has one row per piece of work that one
node at a time may do: a singleton background task ("evict", "gc", ...) or a read-through block being fetched
("fill:<blob>:<block>"). A lease is taken when free, expired or already ours, renewed by taking it again, and
released by its owner; a node that dies simply stops renewing, and the lease lapses.

A mixin of the engine-neutral SQL store: portable ``?`` SQL only, through the engine hooks ``_write`` (one
transaction, retried by the engine) and ``_read``.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any, Callable


@dataclass(slots=True)
class NodeRecord:
    node: str
    address: str
    started: float
    heartbeat: float
    info: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class ClusterLease:
    name: str
    owner: str
    lease_until: float


class ClusterMethods:
    """Node and cluster-lease methods of ``SqlMetaStore`` (see ``atoll.stores.meta.base.MetaStore``)."""

    async def _cluster_read(self, fn: Callable[[Any], Any]) -> Any:
        return await self._read(fn)

    # nodes -----------------------------------------------------------------------------------------------
    async def heartbeat_node(self, record: NodeRecord) -> None:
        """Insert or refresh this node's row."""
        info = json.dumps(record.info, separators=(",", ":"), sort_keys=True)

        def op(conn):
            conn.execute("INSERT INTO nodes (node, address, started, heartbeat, info) VALUES (?, ?, ?, ?, ?) "
                         "ON CONFLICT (node) DO UPDATE SET address = excluded.address, started = excluded.started, "
                         "heartbeat = excluded.heartbeat, info = excluded.info",
                         (record.node, record.address, record.started, record.heartbeat, info))
        await self._write(op)

    async def list_nodes(self) -> list[NodeRecord]:
        rows = await self._cluster_read(lambda conn: conn.execute(
            "SELECT node, address, started, heartbeat, info FROM nodes ORDER BY node").fetchall())
        return [NodeRecord(r[0], r[1], r[2], r[3], _load_info(r[4])) for r in rows]

    async def forget_node(self, node: str, heartbeat_before: float) -> bool:
        """Remove a node's row if its last heartbeat is older than ``heartbeat_before`` (long dead)."""
        return await self._write(lambda conn: conn.execute(
            "DELETE FROM nodes WHERE node = ? AND heartbeat < ?", (node, heartbeat_before)).rowcount > 0)

    # cluster leases --------------------------------------------------------------------------------------
    async def claim_cluster_lease(self, name: str, owner: str, ttl: float) -> bool:
        """Take (or renew) the lease ``name`` for ``ttl`` seconds if it is free, expired or already ``owner``'s."""

        def op(conn):
            now = time.time()
            # One statement: the upsert's row lock (PostgreSQL) or the single writer (SQLite) makes it atomic.
            return conn.execute(
                "INSERT INTO cluster_leases (name, owner, lease_until) VALUES (?, ?, ?) "
                "ON CONFLICT (name) DO UPDATE SET owner = excluded.owner, lease_until = excluded.lease_until "
                "WHERE cluster_leases.owner = excluded.owner OR cluster_leases.lease_until < ?",
                (name, owner, now + ttl, now)).rowcount > 0
        return await self._write(op)

    async def release_cluster_lease(self, name: str, owner: str | None) -> bool:
        """Give the lease up if ``owner`` still holds it (``None``: whoever holds it)."""
        if owner is None:
            return await self._write(lambda conn: conn.execute(
                "DELETE FROM cluster_leases WHERE name = ?", (name,)).rowcount > 0)
        return await self._write(lambda conn: conn.execute(
            "DELETE FROM cluster_leases WHERE name = ? AND owner = ?", (name, owner)).rowcount > 0)

    async def get_cluster_lease(self, name: str) -> ClusterLease | None:
        row = await self._cluster_read(lambda conn: conn.execute(
            "SELECT name, owner, lease_until FROM cluster_leases WHERE name = ?", (name,)).fetchone())
        return ClusterLease(*row) if row else None

    async def list_cluster_leases(self) -> list[ClusterLease]:
        rows = await self._cluster_read(lambda conn: conn.execute(
            "SELECT name, owner, lease_until FROM cluster_leases ORDER BY name").fetchall())
        return [ClusterLease(*r) for r in rows]

    async def prune_cluster_leases(self, expired_before: float) -> int:
        """Remove leases that lapsed before ``expired_before`` (their owners died or forgot to release them)."""
        return await self._write(lambda conn: conn.execute(
            "DELETE FROM cluster_leases WHERE lease_until < ?", (expired_before,)).rowcount)

    # owners of drain claims (migration 5): ``take_drain`` claims entries, the drainer then names itself on them,
    # and whoever finds a named owner dead voids its claims at once (a claim otherwise lapses after its lease) ---
    async def note_drain_claims(self, entries, owner: str) -> None:
        """Name ``owner`` on the claims it just took (the entries as ``take_drain`` returned them)."""
        if not entries:
            return

        def op(conn):
            conn.executemany("UPDATE drain SET claimed_by = ? WHERE bucket = ? AND key = ? AND version_id = ? AND "
                             "op = ?", [(owner, e.bucket, e.key, e.version_id, e.op) for e in entries])
        await self._write(op)

    async def drain_claim_owners(self) -> list[str]:
        """The owners named on claims that have not lapsed."""
        now = time.time()
        rows = await self._read(lambda conn: conn.execute(
            "SELECT DISTINCT claimed_by FROM drain WHERE not_before > ? AND claimed_by != ''", (now,)).fetchall())
        return sorted(r[0] for r in rows)

    async def drain_claims_by_owner(self) -> dict[str, int]:
        """Claims that have not lapsed, counted by the owner named on them (for status)."""
        now = time.time()
        rows = await self._read(lambda conn: conn.execute(
            "SELECT claimed_by, count(*) FROM drain WHERE not_before > ? AND claimed_by != '' GROUP BY claimed_by",
            (now,)).fetchall())
        return {r[0]: r[1] for r in rows}

    async def release_drain_claims(self, owner: str) -> int:
        """Void the claims still named on ``owner`` (known dead): their entries are due again now."""
        def op(conn):
            return conn.execute("UPDATE drain SET not_before = 0, claimed_by = '' WHERE claimed_by = ? AND "
                                "not_before > ?", (owner, time.time())).rowcount
        return await self._write(op)


def _load_info(text: str) -> dict[str, Any]:
    try:
        info = json.loads(text)
    except ValueError:
        return {}
    return info if isinstance(info, dict) else {}
