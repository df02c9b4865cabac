"""From a link (``az://container/prefix``, ``s3://bucket/prefix``, ``gs://...``, ``file:///path``, ``https://...``)
and its options to a ``ColdStore``.

Settings are merged in this order, later winning: what obstore reads from the environment itself (the standard
``AZURE_STORAGE_*``, ``AWS_*``, ``GOOGLE_*`` variables), the server config's ``[cold]`` table, then the link's own
``--option KEY=VALUE``. Secret options (keys, tokens, passwords, SAS) are never stored in the metadata and never
shown: they live in ``<data_dir>/cold-secrets.json`` (mode 0600), written atomically.
"""

from __future__ import annotations

import fcntl
import json
import os
import tempfile
from typing import Any, Callable, Mapping
from urllib.parse import urlsplit

from obstore.store import AzureStore, GCSStore, HTTPStore, LocalStore, S3Store

from atoll import errors
from atoll.stores.cold.endpoint import Endpoint
from atoll.stores.cold.leftovers import S3Leftovers
from atoll.stores.cold.store import ColdStore, Timeouts, client_options, retry_config

SCHEMES = ("az", "s3", "gs", "file", "https", "http")
MODES = ("cache", "writeback", "writethrough")
_SECRET_WORDS = ("secret", "token", "password", "sas", "credential")
# obstore settings that belong to the HTTP client rather than to the store
_CLIENT_OPTIONS = {"allow_http", "allow_invalid_certificates", "proxy_url", "user_agent", "timeout",
                   "connect_timeout"}
_STORE_PREFIXES = {"az": "azure_", "s3": "aws_", "gs": "google_"}


def is_secret(option: str) -> bool:
    name = option.lower()
    return any(word in name for word in _SECRET_WORDS) or name.endswith("key")


def parse_url(url: str) -> tuple[str, str, str]:
    """(scheme, container or bucket or base, prefix). Raises InvalidArgument with a sentence a user can act on."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in SCHEMES:
        raise errors.InvalidArgument(f"cold store URL must start with one of {', '.join(s + '://' for s in SCHEMES)}")
    if parts.username or parts.password or parts.query:
        raise errors.InvalidArgument("cold store URL must not carry credentials or a query; use --option")
    if scheme == "file":
        if not parts.path.startswith("/"):
            raise errors.InvalidArgument("file:// cold stores need an absolute path, e.g. file:///srv/cold")
        return scheme, parts.path.rstrip("/") or "/", ""
    if scheme in ("http", "https"):
        return scheme, f"{scheme}://{parts.netloc}{parts.path}".rstrip("/"), ""
    if not parts.netloc:
        raise errors.InvalidArgument(f"{scheme}:// cold store URL needs a {'container' if scheme == 'az' else 'bucket'}")
    return scheme, parts.netloc, parts.path.strip("/")


def split_options(options: Mapping[str, str]) -> tuple[dict[str, str], dict[str, str]]:
    """(plain, secret) by option name."""
    plain = {k.lower(): v for k, v in options.items() if not is_secret(k)}
    secret = {k.lower(): v for k, v in options.items() if is_secret(k)}
    return plain, secret


class SecretFile:
    """Per-bucket secret link options in one JSON file, mode 0600, replaced atomically."""

    def __init__(self, path: str) -> None:
        self.path = path

    def read(self) -> dict[str, dict[str, str]]:
        try:
            with open(self.path, encoding="utf-8") as f:
                return json.load(f)
        except FileNotFoundError:
            return {}

    def get(self, bucket: str) -> dict[str, str]:
        return dict(self.read().get(bucket, {}))

    def put(self, bucket: str, secrets: Mapping[str, str] | None) -> None:
        directory = os.path.dirname(os.path.abspath(self.path))
        os.makedirs(directory, exist_ok=True)
        # Read-modify-write under an exclusive lock: two `atoll bucket link` runs at once would otherwise each
        # write back the table they read, and one bucket would lose its credentials.
        lock_fd = os.open(self.path + ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX)
            self._put_locked(bucket, secrets, directory)
        finally:
            os.close(lock_fd)

    def _put_locked(self, bucket: str, secrets: Mapping[str, str] | None, directory: str) -> None:
        table = self.read()
        if secrets:
            table[bucket] = dict(secrets)
        else:
            table.pop(bucket, None)
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=".cold-secrets.")
        try:
            os.fchmod(fd, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(table, f)
                f.flush()
                os.fsync(f.fileno())
            os.rename(tmp, self.path)
        except BaseException:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            raise
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def build(url: str, options: Mapping[str, str], defaults: Mapping[str, str] | None = None,
          timeouts: Timeouts | None = None, endpoint_for: Callable[[str], Endpoint] | None = None) -> ColdStore:
    """A ColdStore for ``url``; ``options`` are the link's (plain and secret merged), ``defaults`` the config's
    ``[cold]`` table; ``endpoint_for(key)`` gives the Endpoint shared by links to the same account or endpoint.
    Raises InvalidArgument for a bad URL or setting (never echoing a secret value)."""
    scheme, base, prefix = parse_url(url)
    timeouts = timeouts or Timeouts()
    settings: dict[str, str] = {}
    wanted = _STORE_PREFIXES.get(scheme)
    for key, value in (defaults or {}).items():
        owner = next((p for p in _STORE_PREFIXES.values() if key.startswith(p)), None)
        if owner is None or owner == wanted:
            settings[key] = value
    settings.update({k.lower(): v for k, v in options.items()})
    client = {k: settings.pop(k) for k in list(settings) if k in _CLIENT_OPTIONS}
    endpoint = next((v for k, v in settings.items() if k.endswith("endpoint") or k.endswith("endpoint_url")), "")
    endpoint = endpoint or os.environ.get("AWS_ENDPOINT_URL" if scheme == "s3" else "AZURE_ENDPOINT" if scheme == "az" else "", "")
    allow_http = str(client.pop("allow_http", "")).lower() in ("1", "true", "yes") or endpoint.startswith("http://")
    opts = client_options(timeouts, allow_http or scheme == "http")
    opts.update(client)
    name = url  # carries no credentials (parse_url refuses them)
    key = endpoint_key(scheme, base, settings, _without_credentials(endpoint))
    try:
        if scheme == "az":
            store: Any = AzureStore(base, prefix=prefix or None, config=settings or None, client_options=opts,
                                    retry_config=retry_config())
        elif scheme == "s3":
            if endpoint and not any(k in settings for k in ("endpoint", "aws_endpoint", "aws_endpoint_url", "endpoint_url")):
                settings["endpoint"] = endpoint
            store = S3Store(base, prefix=prefix or None, config=settings or None, client_options=opts,
                            retry_config=retry_config())
        elif scheme == "gs":
            store = GCSStore(base, prefix=prefix or None, config=settings or None, client_options=opts,
                             retry_config=retry_config())
        elif scheme == "file":
            os.makedirs(base, exist_ok=True)
            store = LocalStore(base)
        else:
            store = HTTPStore.from_url(base, client_options=opts, retry_config=retry_config())
    except errors.AtollError:
        raise
    except Exception as exc:  # noqa: BLE001 - obstore's messages can echo values; report names only
        known = ", ".join(sorted(settings)) or "none"
        raise errors.InvalidArgument(f"cannot configure the {scheme}:// cold store ({type(exc).__name__}); "
                                     f"options given: {known}") from None
    leftovers = S3Leftovers(base, prefix, settings, settings.get("endpoint") or settings.get("aws_endpoint") or
                            settings.get("aws_endpoint_url") or settings.get("endpoint_url") or "") \
        if scheme == "s3" else None
    return ColdStore(store, name, timeouts, endpoint_for(key) if endpoint_for else Endpoint(key), leftovers)


def _without_credentials(url: str) -> str:
    """A URL without user info, query or fragment: what may be logged and shown."""
    if not url:
        return ""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return parts._replace(netloc=host, query="", fragment="").geturl()


def endpoint_key(scheme: str, base: str, settings: Mapping[str, str], endpoint: str) -> str:
    """What links share a network path and an account: ``az://account``, ``s3://endpoint-or-region``,
    ``gs://``, ``file://``, or the HTTP base URL. Never a credential."""
    if scheme == "az":
        account = settings.get("azure_storage_account_name") or settings.get("account_name") or \
            os.environ.get("AZURE_STORAGE_ACCOUNT_NAME", "")
        return f"az://{account}@{endpoint}" if endpoint else f"az://{account}"
    if scheme == "s3":
        region = settings.get("aws_region") or settings.get("region") or os.environ.get("AWS_REGION", "")
        return f"s3://{endpoint or region or 'aws'}"
    if scheme == "gs":
        return "gs://"
    if scheme == "file":
        return "file://"
    return base
