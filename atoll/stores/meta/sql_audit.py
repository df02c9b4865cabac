"""The audit log in the metadata store (#10): one row per operator action taken through the admin API, kept
cluster-wide (every node writes into the one store), newest first by id.

``audit.id`` is assigned by the engine (SQLite's rowid alias, PostgreSQL's identity column) and only grows: rows are
never deleted or updated here, so an id is never handed out twice and ``before=<id>`` pages back in time without
gaps. ``detail`` is a JSON object chosen by the caller (atoll.admin.audit keeps secrets out of it).

A mixin of the engine-neutral SQL store: portable ``?`` SQL only, through the engine hooks ``_write`` and ``_read``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

MAX_AUDIT_PAGE = 1000


@dataclass(slots=True)
class AuditEntry:
    time: float
    actor: str  # who: an operator's access key id, or "admin-token"
    action: str  # what: "job.create", "pin.add", ...
    target: str  # on what: a bucket, "bucket/prefix", a job id, a tenant
    outcome: str  # "ok", or the error code the request was refused with
    request_id: str = ""
    node: str = ""
    detail: dict[str, Any] = field(default_factory=dict)
    id: int = 0  # 0 until recorded

    def view(self) -> dict[str, Any]:
        return {"id": self.id, "time": self.time, "actor": self.actor, "action": self.action, "target": self.target,
                "detail": self.detail, "outcome": self.outcome, "request_id": self.request_id, "node": self.node}


_COLUMNS = "id, time, actor, action, target, detail, outcome, request_id, node"


class AuditMethods:
    """Audit-log methods of ``SqlMetaStore`` (see ``atoll.stores.meta.base.MetaStore``)."""

    async def record_audit(self, entry: AuditEntry) -> int:
        """Append ``entry``; returns its id."""
        detail = json.dumps(entry.detail, separators=(",", ":"), sort_keys=True)

        def op(conn):
            return conn.execute(
                "INSERT INTO audit (time, actor, action, target, detail, outcome, request_id, node) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
                (entry.time, entry.actor, entry.action, entry.target, detail, entry.outcome, entry.request_id,
                 entry.node)).fetchone()[0]
        return await self._write(op)

    async def list_audit(self, limit: int = 100, before: int | None = None) -> list[AuditEntry]:
        """Up to ``limit`` entries (at most MAX_AUDIT_PAGE), newest first; with ``before``, those older than the
        entry of that id."""
        limit = max(1, min(int(limit), MAX_AUDIT_PAGE))
        if before is None:
            sql, params = f"SELECT {_COLUMNS} FROM audit ORDER BY id DESC LIMIT ?", (limit,)
        else:
            sql, params = f"SELECT {_COLUMNS} FROM audit WHERE id < ? ORDER BY id DESC LIMIT ?", (int(before), limit)
        rows = await self._read(lambda conn: conn.execute(sql, params).fetchall())
        return [AuditEntry(id=r[0], time=r[1], actor=r[2], action=r[3], target=r[4], detail=_load_detail(r[5]),
                           outcome=r[6], request_id=r[7], node=r[8]) for r in rows]


def _load_detail(text: str) -> dict[str, Any]:
    try:
        detail = json.loads(text)
    except ValueError:
        return {}
    return detail if isinstance(detail, dict) else {}
