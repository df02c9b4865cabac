"""Rows of the metadata tables and the models they hold: column lists (always named, never ``*``: the engines
may order columns differently) and the conversions both ways. Shared by every SQL engine."""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Sequence

from atoll.core.models import (RESIDENCY_CODES, RESIDENCY_NAMES, Bucket, DrainEntry, Extent, Identity, Job, Limits,
                               Link, ObjectVersion, Part, Tenant, Upload)

OBJECT_COLUMNS = ("bucket, key, version_id, size, etag, last_modified, owner_id, part_count, checksum_type, extents, "
                  "attrs, residency, warm_seq, pinned_until")
OBJECT_PLACEHOLDERS = ",".join("?" * 14)
IDENTITY_COLUMNS = ("access_key, secret_key, owner_id, display_name, created, is_root, account_name, "
                    "account_key, tenant, role, scopes")
BUCKET_COLUMNS = "name, owner_id, created, region, tenant, limits"
TENANT_COLUMNS = "name, created, settings"
LEASE_COLUMNS = "state, lease_id, duration, expires_at, break_at"
UPLOAD_COLUMNS = "upload_id, bucket, key, initiated, owner_id, attrs"
PART_COLUMNS = "upload_id, part_number, size, etag, blob_id, last_modified, checksums"
BLOCK_COLUMNS = "bucket, key, block_id, blob_id, size, md5, created"
LINK_COLUMNS = "bucket, url, mode, revalidate, options, created"
GROUP_COLUMNS = "bucket, prefix, markers"
DRAIN_COLUMNS = "bucket, key, op, version_id, size, since, attempts, last_error, not_before"
JOB_COLUMNS = "job_id, kind, bucket, spec, state, priority, created, updated, progress, error, owner, lease_until"
COPY_COLUMNS = ("bucket, key, copy_id, source, status, started, copied, total, completed, description, version_id, "
                "heartbeat")
BUCKET_PROPERTY_COLUMNS = "bucket, public_access, metadata, access_policies, modified"


def placeholders(columns: str) -> str:
    return ", ".join("?" * (columns.count(",") + 1))


def row_to_identity(row: Sequence[Any]) -> Identity:
    return Identity(row[0], row[1], row[2], row[3], row[4], bool(row[5]), row[6], row[7], row[8], row[9],
                    tuple(json.loads(row[10])))


def tenant_settings(tenant: Tenant) -> str:
    return json.dumps({"limits": dataclasses.asdict(tenant.limits), "warm_reserved": tenant.warm_reserved,
                       "warm_cap": tenant.warm_cap, "wan_weight": tenant.wan_weight}, separators=(",", ":"))


def row_to_tenant(row: Sequence[Any]) -> Tenant:
    settings = json.loads(row[2])
    return Tenant(row[0], row[1], Limits(**settings.get("limits", {})), settings.get("warm_reserved", 0),
                  settings.get("warm_cap", 0), settings.get("wan_weight", 1.0))


def row_to_bucket(row: Sequence[Any]) -> Bucket:
    return Bucket(row[0], row[1], row[2], row[3], row[4], Limits(**json.loads(row[5])))


def row_to_version(row: Sequence[Any]) -> ObjectVersion:
    attrs = json.loads(row[10])
    cold = attrs.get("k")
    return ObjectVersion(
        bucket=row[0], key=row[1], version_id=row[2], size=row[3], etag=row[4], last_modified=row[5],
        owner_id=row[6], part_count=row[7], checksum_type=row[8],
        extents=[Extent(b, o, n) for b, o, n in json.loads(row[9])],
        headers=attrs.get("h", {}), user_meta=attrs.get("m", {}), checksums=attrs.get("c", {}),
        residency=RESIDENCY_NAMES[row[11]], warm_seq=row[12], pinned_until=row[13],
        cold_etag=cold[0] if cold else "", cold_mtime=cold[1] if cold else 0.0,
        blocks=[(b, n, m) for b, n, m in attrs.get("b", ())],
    )


def attrs_json(v: ObjectVersion) -> str:
    attrs: dict[str, Any] = {"h": v.headers, "m": v.user_meta, "c": v.checksums}
    if v.cold_etag:
        attrs["k"] = [v.cold_etag, v.cold_mtime]
    if v.blocks:
        attrs["b"] = v.blocks
    return json.dumps(attrs, separators=(",", ":"))


def extents_json(v: ObjectVersion) -> str:
    return json.dumps([[e.blob_id, e.offset, e.length] for e in v.extents], separators=(",", ":"))


def version_params(v: ObjectVersion) -> tuple:
    return (v.bucket, v.key, v.version_id, v.size, v.etag, v.last_modified, v.owner_id, v.part_count,
            v.checksum_type, extents_json(v), attrs_json(v), RESIDENCY_CODES[v.residency], v.warm_seq,
            v.pinned_until)


def page_after(select: str, order: str, after: Sequence[Any] | None, limit: int) -> tuple[str, list[Any]]:
    """A keyset page of ``select``: up to ``limit`` rows after ``after`` in ``order`` (its column list)."""
    params: list[Any] = []
    if after is not None:
        select += f" WHERE ({order}) > ({', '.join('?' * len(after))})"
        params += list(after)
    return f"{select} ORDER BY {order} LIMIT ?", [*params, limit]


def row_to_link(row: Sequence[Any]) -> Link:
    return Link(bucket=row[0], url=row[1], mode=row[2], revalidate=row[3], options=json.loads(row[4]),
                created=row[5])


def row_to_job(row: Sequence[Any]) -> Job:
    return Job(job_id=row[0], kind=row[1], bucket=row[2], spec=json.loads(row[3]), state=row[4], priority=row[5],
               created=row[6], updated=row[7], progress=json.loads(row[8]), error=row[9], owner=row[10])


def row_to_drain(row: Sequence[Any]) -> DrainEntry:
    return DrainEntry(bucket=row[0], key=row[1], op=row[2], version_id=row[3], size=row[4], since=row[5],
                      attempts=row[6], last_error=row[7])


def key_range_query(columns: str, bucket: str, start: str, inclusive: bool, end: str | None,
                    limit: int) -> tuple[str, list[Any]]:
    """One index seek: keys after ``start`` (or from it when inclusive) and before ``end``, in key order.

    A bound may hold a NUL (``k + "\\0"``: just after ``k``), which PostgreSQL's text cannot take. No key holds
    one (the S3 front refuses it), so a bound ``p + "\\0" + rest`` falls between ``p`` and every longer key:
    ``key < bound`` is ``key <= p`` and ``key >(=) bound`` is ``key > p``, which both engines run."""
    start_op = ">=" if inclusive else ">"
    if "\0" in start:
        start, start_op = start[:start.index("\0")], ">"
    sql = f"SELECT {columns} FROM objects WHERE bucket = ? AND key {start_op} ?"
    params: list[Any] = [bucket, start]
    if end is not None:
        end_op = "<"
        if "\0" in end:
            end, end_op = end[:end.index("\0")], "<="
        sql += f" AND key {end_op} ?"
        params.append(end)
    sql += " ORDER BY key LIMIT ?"
    params.append(limit)
    return sql, params


def row_to_upload(row: Sequence[Any]) -> Upload:
    attrs = json.loads(row[5])
    return Upload(upload_id=row[0], bucket=row[1], key=row[2], initiated=row[3], owner_id=row[4],
                  headers=attrs.get("h", {}), user_meta=attrs.get("m", {}),
                  checksum_algorithm=attrs.get("ca", ""), checksum_type=attrs.get("ct", ""))


def row_to_part(row: Sequence[Any]) -> Part:
    return Part(upload_id=row[0], part_number=row[1], size=row[2], etag=row[3], blob_id=row[4],
                last_modified=row[5], checksums=json.loads(row[6]))
