"""Contract of the audit log (#10, atoll/stores/meta/sql_audit.py) on SQLite and PostgreSQL: entries appended with
growing ids, read back newest first with their JSON detail, paged with ``before``, and written by two stores (two
nodes) at once without an id given twice."""

from __future__ import annotations

import asyncio
import time

from atoll.stores.meta.sql_audit import MAX_AUDIT_PAGE, AuditEntry


def _entry(n: int, **fields) -> AuditEntry:
    return AuditEntry(**{"time": 1000.0 + n, "actor": "admin-token", "action": "pin.add", "target": f"b/p{n}",
                         "outcome": "ok", "request_id": f"R{n}", "node": "n1", "detail": {"n": n}, **fields})


async def test_entries_come_back_newest_first_with_every_field(meta_store):
    now = time.time()
    first = await meta_store.record_audit(AuditEntry(
        time=now, actor="AKOPERATOR", action="link.set", target="warm-1", outcome="ok", request_id="ABC0001",
        node="node-a", detail={"url": "s3://cold/x", "options": ["endpoint", "secret_access_key"], "check": True}))
    second = await meta_store.record_audit(AuditEntry(
        time=now + 1, actor="admin-token", action="tenant.create", target="acme", outcome="TenantAlreadyExists",
        request_id="ABC0002", node="node-b"))
    assert second > first > 0
    entries = await meta_store.list_audit(10)
    assert [e.view() for e in entries] == [
        {"id": second, "time": now + 1, "actor": "admin-token", "action": "tenant.create", "target": "acme",
         "detail": {}, "outcome": "TenantAlreadyExists", "request_id": "ABC0002", "node": "node-b"},
        {"id": first, "time": now, "actor": "AKOPERATOR", "action": "link.set", "target": "warm-1",
         "detail": {"url": "s3://cold/x", "options": ["endpoint", "secret_access_key"], "check": True},
         "outcome": "ok", "request_id": "ABC0001", "node": "node-a"}]


async def test_pages_go_back_in_time_with_before(meta_store):
    ids = [await meta_store.record_audit(_entry(n)) for n in range(7)]
    assert ids == sorted(ids) and len(set(ids)) == 7
    page = await meta_store.list_audit(3)
    assert [e.detail["n"] for e in page] == [6, 5, 4]
    page = await meta_store.list_audit(3, before=page[-1].id)
    assert [e.detail["n"] for e in page] == [3, 2, 1]
    page = await meta_store.list_audit(3, before=page[-1].id)
    assert [e.detail["n"] for e in page] == [0]
    assert await meta_store.list_audit(3, before=page[-1].id) == []
    assert await meta_store.list_audit(3, before=ids[0] - 1000) == []
    assert [e.id for e in await meta_store.list_audit(MAX_AUDIT_PAGE + 50)] == ids[::-1]  # capped, not refused
    assert len(await meta_store.list_audit(0)) == 1  # at least one entry


async def test_two_nodes_append_at_once_and_see_each_others_entries(meta_store_pair):
    one, two = meta_store_pair
    ids = await asyncio.gather(*(store.record_audit(_entry(n, node=f"n{i}"))
                                 for n in range(20) for i, store in enumerate((one, two))))
    assert len(set(ids)) == 40
    seen_by_one = await one.list_audit(100)
    seen_by_two = await two.list_audit(100)
    assert [e.id for e in seen_by_one] == [e.id for e in seen_by_two] == sorted(ids, reverse=True)
    assert {e.node for e in seen_by_one} == {"n0", "n1"}
