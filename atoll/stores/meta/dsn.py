"""Metadata store locations: which engine a ``metadata`` setting names, and how to show it without its password."""

from __future__ import annotations

from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

POSTGRES_SCHEMES = ("postgresql://", "postgres://")
_SECRET_PARAMS = {"password", "sslpassword"}


def is_postgres(metadata: str) -> bool:
    return metadata.startswith(POSTGRES_SCHEMES)


def redact(metadata: str) -> str:
    """``metadata`` fit for logs and messages: ``postgresql://user:***@host/db`` (a password in the query too)."""
    if not is_postgres(metadata):
        return metadata
    try:
        parts = urlsplit(metadata)
        netloc = parts.netloc
        if "@" in netloc:
            userinfo, host = netloc.rsplit("@", 1)
            if ":" in userinfo:
                netloc = f"{userinfo.split(':', 1)[0]}:***@{host}"
        query = urlencode([(k, "***" if k.lower() in _SECRET_PARAMS else v)
                           for k, v in parse_qsl(parts.query, keep_blank_values=True)], safe="*")
        return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
    except ValueError:
        # Not parseable as a URL: show only what cannot hold a secret.
        return metadata.split("://", 1)[0] + "://***"
