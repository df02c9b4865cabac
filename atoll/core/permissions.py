"""Who may do what: the one place that decides whether an identity may act on a bucket, a key or a listing.

Rules (docs/governance.md, "Tenants and permissions"):

* Operators (``Identity.operator``: the root identity, or an unscoped admin of the root tenant) may do anything.
* Anyone else only within their own tenant, with a role (read < write < admin) at least the action's, and, when
  the identity has scopes, inside one of them: a scope is "bucket" (all of it) or "bucket/prefix" (keys starting
  with the prefix, a plain string prefix). A listing needs a list prefix inside a scope prefix. Bucket-level reads
  (HEAD bucket, properties) need any scope in the bucket; bucket-level writes and admin actions need a scope on the
  whole bucket.
* Anonymous callers (identity None) may do nothing here: public container reads run as a read-only identity of the
  bucket's tenant (atoll.blob.app).

SAS tokens and presigned URLs run as their signer, so the signer's role and scopes bound whatever the token's own
permissions say; the front ends check the token's permissions, this module the signer's.

This runs on every request (a GET of a small object is ~100 µs in all): no allocation on the common paths, and
the parsed form of a scope list is cached.
"""

from __future__ import annotations

import functools

from atoll import errors
from atoll.core.models import ROLES, Bucket, Identity

_RANK = {role: rank for rank, role in enumerate(ROLES)}
_DENIED = "Access Denied."


@functools.lru_cache(maxsize=4096)
def _parsed(scopes: tuple[str, ...]) -> dict[str, tuple[str, ...]]:
    """Scopes as bucket -> key prefixes; the prefix "" stands for the whole bucket."""
    found: dict[str, list[str]] = {}
    for scope in scopes:
        bucket, _, prefix = scope.partition("/")
        found.setdefault(bucket, []).append(prefix)
    return {bucket: tuple(prefixes) for bucket, prefixes in found.items()}


def _within(prefixes: tuple[str, ...], name: str) -> bool:
    for prefix in prefixes:
        if name.startswith(prefix):
            return True
    return False


def denial(identity: Identity | None, bucket: Bucket, action: str, key: str | None = None,
           prefix: str | None = None) -> str | None:
    """None when ``identity`` may do ``action`` (read | write | admin) on ``bucket`` (on ``key``, or listing under
    ``prefix``, when given); else the reason, safe to show to the caller (another tenant's caller learns nothing
    but "Access Denied.")."""
    if identity is None:
        return _DENIED
    if identity.is_root or identity.operator:
        return None
    if identity.tenant != bucket.tenant:
        return _DENIED
    if _RANK.get(identity.role, -1) < _RANK[action]:
        return f"Access Denied: the identity's role ({identity.role}) does not allow {action}."
    if not identity.scopes:
        return None
    prefixes = _parsed(identity.scopes).get(bucket.name)
    if prefixes is None:
        return f"Access Denied: bucket {bucket.name} is outside the identity's scopes."
    if key is not None:
        if _within(prefixes, key):
            return None
    elif prefix is not None:
        if _within(prefixes, prefix):
            return None
    elif action == "read" or "" in prefixes:
        return None
    return f"Access Denied: outside the identity's scopes in bucket {bucket.name}."


def allows(identity: Identity | None, bucket: Bucket, action: str, key: str | None = None,
           prefix: str | None = None) -> bool:
    return denial(identity, bucket, action, key, prefix) is None


def authorize(identity: Identity | None, bucket: Bucket, action: str, key: str | None = None,
              prefix: str | None = None) -> None:
    """Raise AccessDenied unless ``identity`` may do ``action`` on ``bucket`` (see ``denial``)."""
    reason = denial(identity, bucket, action, key, prefix)
    if reason is not None:
        raise errors.AccessDenied(reason, bucket=bucket.name)


def may_create_bucket(identity: Identity, name: str) -> bool:
    """CreateBucket: an operator, or an admin of its tenant on every bucket, or on a scope naming this whole
    bucket (the bucket then belongs to the identity's tenant)."""
    if identity.is_root or identity.operator:
        return True
    if identity.role != "admin":
        return False
    return not identity.scopes or "" in _parsed(identity.scopes).get(name, ())


def visible_buckets(identity: Identity, buckets: list[Bucket]) -> list[Bucket]:
    """What ListBuckets / List Containers show: the tenant's buckets (the caller's store query already keeps to
    them), and of those only the scoped ones for a scoped identity."""
    if identity.operator or not identity.scopes:
        return buckets
    scoped = _parsed(identity.scopes)
    return [b for b in buckets if b.name in scoped]
