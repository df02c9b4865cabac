"""Configuration: defaults, then a TOML file, then ``ATOLL_*`` environment variables, then command-line flags.

Loaded once at start and validated as a whole; every bad setting is reported with its name, where it came from
and what is expected — never a traceback. The result is a frozen ``Config`` passed down explicitly.

Example ``atoll.toml``::

    data_dir = "/srv/atoll"
    s3_address = "0.0.0.0:9000"
    s3_domains = ["s3.island.local"]   # virtual-hosted style: <bucket>.s3.island.local
    blob_listen = "0.0.0.0:10000"      # Azure Blob endpoint ("off" for none)
    blob_domains = ["blob.island.local"]   # host style: <account>.blob.island.local
    region = "us-east-1"
    workers = 2
    access_log = "/var/log/atoll/access.log"   # "-" for stderr, "off" for none
    log_level = "info"
    shutdown_grace = 30
    [timeouts]
    keep_alive = 60
    request_head = 30
    stall = 60
    [packed]
    max_size = 262144                  # bodies up to this size go to segment files; 0 = one file per object
    [tiering]
    warm_capacity = 2000000000000     # bytes; 0 = 90% of the data directory's filesystem
    high_watermark = 0.90
    low_watermark = 0.80
    [cold]                             # defaults for every cold-store link (obstore settings; keep this file 0600)
    azure_storage_account_name = "myaccount"
    aws_endpoint = "https://s3.example.net"
"""

from __future__ import annotations

import math
import os
import tomllib
from dataclasses import MISSING, dataclass, field, fields, replace
from typing import Any, Mapping

from atoll.stores.meta.dsn import is_postgres


class ConfigError(Exception):
    """One or more settings are invalid; ``problems`` lists them, one human sentence each."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


@dataclass(frozen=True, slots=True)
class Config:
    """The settings in effect. What each means, its unit, range, TOML key and environment variable: ``SETTINGS``
    below, the one schema (docs/configuration.md is generated from it by ``atoll config reference``)."""

    data_dir: str = "./atoll-data"
    s3_address: str = "127.0.0.1:9000"
    s3_domains: tuple[str, ...] = ()
    blob_listen: str = "127.0.0.1:10000"
    blob_domains: tuple[str, ...] = ()
    region: str = "us-east-1"
    workers: int = 1
    metadata: str = ""
    access_log: str = ""
    log_level: str = "info"
    log_format: str = "json"
    event_log: str = ""
    shutdown_grace: float = 30.0
    keep_alive_timeout: float = 60.0
    request_head_timeout: float = 30.0
    stall_timeout: float = 60.0
    max_clock_skew: float = 900.0
    min_part_size: int = 5 << 20
    # packed store (small objects in segment files)
    packed_max_size: int = 256 << 10
    segment_size: int = 64 << 20
    compaction_threshold: float = 0.5
    compaction_interval: float = 5.0
    compaction_grace: float = 30.0
    compaction_settle: float = 10.0
    # tiering
    admin_address: str = "127.0.0.1:9001"
    warm_capacity: int = 0
    high_watermark: float = 0.90
    low_watermark: float = 0.80
    fill_block_size: int = 8 << 20
    fill_parallelism: int = 8
    drain_concurrency: int = 8
    drain_bandwidth: int = 0
    stage_concurrency: int = 16
    cold_connect_timeout: float = 3.0
    cold_first_byte_timeout: float = 3.0
    cold_stall_timeout: float = 30.0
    cold_retries: int = 2
    breaker_failures: int = 3
    breaker_cooldown: float = 2.0
    breaker_max_cooldown: float = 10.0
    degraded_latency: float = 1.0
    demand_concurrency: int = 64
    demand_bandwidth: int = 0
    stage_bandwidth: int = 0
    wan_aging: float = 5.0
    writethrough_on_partition: str = "refuse"
    negative_ttl: float = 5.0
    uncommitted_block_ttl: float = 7 * 86400.0
    # cluster (#9): several nodes on one metadata store and one data directory (docs/cluster.md)
    node: str = ""
    node_timeout: float = 10.0
    heartbeat_interval: float = 2.0
    # dashboard (#10): the web pages on the admin port
    dashboard_sample_interval: float = 5.0
    dashboard_history: float = 3600.0
    dashboard_session_ttl: float = 43200.0
    cold_options: Mapping[str, str] = field(default_factory=dict)  # [cold] table: default obstore settings
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def s3_host(self) -> str:
        return self.s3_address.rsplit(":", 1)[0].strip("[]")

    @property
    def s3_port(self) -> int:
        return int(self.s3_address.rsplit(":", 1)[1])

    @property
    def blob_host(self) -> str:
        return self.blob_listen.rsplit(":", 1)[0].strip("[]")

    @property
    def blob_port(self) -> int:
        return int(self.blob_listen.rsplit(":", 1)[1])

    @property
    def cold_secrets_path(self) -> str:
        return os.path.join(self.data_dir, "cold-secrets.json")

    @property
    def metadata_path(self) -> str:
        if self.metadata:
            return self.metadata.removeprefix("sqlite://")
        return os.path.join(self.data_dir, "meta.sqlite3")

    @property
    def access_log_path(self) -> str:
        if self.access_log == "":
            return os.path.join(self.data_dir, "logs", "access.log")
        return self.access_log

    @property
    def node_name(self) -> str:
        """This node's name in the cluster: ``node`` if set, else <hostname>-<s3 port> (so that several nodes on
        one machine differ)."""
        if self.node:
            return self.node
        import socket

        return f"{socket.gethostname()}-{self.s3_port}"


@dataclass(frozen=True, slots=True)
class Setting:
    """One setting as an operator sees it. The default is Config's; ``file_path`` is the key in the TOML file
    (a table path), ``env`` the environment variable, ``flag`` the ``atoll serve`` option if it has one, ``unit``
    what a number counts, ``allowed`` the values ``validate`` accepts, in words."""

    name: str
    kind: type  # str, int, float, or tuple (a list of strings)
    file_path: tuple[str, ...]
    env: str
    description: str
    unit: str = ""
    allowed: str = ""
    flag: str = ""
    default_text: str = ""  # how the default reads when the value alone would mislead ("" = the value)

    @property
    def key(self) -> str:
        return ".".join(self.file_path)

    @property
    def default(self) -> Any:
        return _DEFAULTS[self.name]


_SECONDS = "seconds"
_POSITIVE = "> 0"
# Every setting, in the order of docs/configuration.md (generated from this by `atoll config reference`).
SETTINGS: tuple[Setting, ...] = (
    # server
    Setting("data_dir", str, ("data_dir",), "ATOLL_DATA_DIR", "Directory of the metadata (SQLite), blobs, segments, "
            "logs and run state. Nodes of a cluster share it (the same path on every node).", flag="--data-dir",
            allowed="a directory (created if missing)"),
    Setting("s3_address", str, ("s3_address",), "ATOLL_S3_ADDRESS", "Where the S3 endpoint listens.",
            allowed="HOST:PORT", flag="--s3-address"),
    Setting("s3_domains", tuple, ("s3_domains",), "ATOLL_S3_DOMAINS", "Domains for virtual-hosted style requests "
            "(`<bucket>.<domain>`); path style always works.", allowed="list of domains (env: comma-separated)",
            flag="--s3-domain", default_text="none"),
    Setting("blob_listen", str, ("blob_listen",), "ATOLL_BLOB_LISTEN", "Where the Azure Blob endpoint listens "
            "(Azurite's port by default).", allowed="HOST:PORT or `off`", flag="--blob-address"),
    Setting("blob_domains", tuple, ("blob_domains",), "ATOLL_BLOB_DOMAINS", "Domains for host-style Blob requests "
            "(`<account>.<domain>`, e.g. `blob.island.local`); path style always works.",
            allowed="list of domains (env: comma-separated)", flag="--blob-domain", default_text="none"),
    Setting("region", str, ("region",), "ATOLL_REGION", "Region reported to S3 clients and expected in SigV4 "
            "credentials scopes.", allowed="letters, digits, `-`", flag="--region"),
    Setting("workers", int, ("workers",), "ATOLL_WORKERS", "Serving processes sharing the ports (SO_REUSEPORT).",
            unit="processes", allowed="1 to 256", flag="--workers"),
    Setting("metadata", str, ("metadata",), "ATOLL_METADATA", "Metadata store: a PostgreSQL URL for a cluster "
            "(`postgresql://user:password@host/db`), or a SQLite path.", flag="--metadata",
            allowed="`postgresql://...`, `postgres://...`, `sqlite:///path` or `*.sqlite3|*.sqlite|*.db`",
            default_text="`<data_dir>/meta.sqlite3`"),
    Setting("access_log", str, ("access_log",), "ATOLL_ACCESS_LOG", "Access log, one JSON object per request.",
            allowed="a path, `-` (stderr) or `off`", flag="--access-log", default_text="`<data_dir>/logs/access.log`"),
    Setting("log_level", str, ("log_level",), "ATOLL_LOG_LEVEL", "Level of the event log.",
            allowed="debug, info, warning, error", flag="--log-level"),
    Setting("log_format", str, ("log_format",), "ATOLL_LOG_FORMAT", "Format of event log lines: one JSON object "
            "per line, or plain text.", allowed="json, text"),
    Setting("event_log", str, ("event_log",), "ATOLL_EVENT_LOG", "Where event (not access) log lines go.",
            allowed='`""` or `"-"` (stderr), or a file path', default_text="stderr"),
    Setting("shutdown_grace", float, ("shutdown_grace",), "ATOLL_SHUTDOWN_GRACE", "On SIGTERM, how long in-flight "
            "requests may take to finish before the workers stop.", unit=_SECONDS, allowed=_POSITIVE),
    Setting("keep_alive_timeout", float, ("timeouts", "keep_alive"), "ATOLL_KEEP_ALIVE_TIMEOUT", "An idle "
            "keep-alive connection is closed after this.", unit=_SECONDS, allowed=_POSITIVE),
    Setting("request_head_timeout", float, ("timeouts", "request_head"), "ATOLL_REQUEST_HEAD_TIMEOUT", "Longest "
            "time to receive a request's head (line and headers).", unit=_SECONDS, allowed=_POSITIVE),
    Setting("stall_timeout", float, ("timeouts", "stall"), "ATOLL_STALL_TIMEOUT", "A request or answer body whose "
            "bytes stop flowing this long is cut.", unit=_SECONDS, allowed=_POSITIVE),
    Setting("max_clock_skew", float, ("max_clock_skew",), "ATOLL_MAX_CLOCK_SKEW", "Signed requests whose time "
            "differs from the server's by more than this are refused (`RequestTimeTooSkewed`).", unit=_SECONDS,
            allowed=_POSITIVE),
    Setting("min_part_size", int, ("min_part_size",), "ATOLL_MIN_PART_SIZE", "Smallest multipart part (all but "
            "the last).", unit="bytes", allowed="1 byte to 5 GiB"),
    # packed store
    Setting("packed_max_size", int, ("packed", "max_size"), "ATOLL_PACKED_MAX_SIZE", "Single-PUT bodies up to "
            "this size go to shared segment files (docs/packed.md); 0: one file per object.", unit="bytes",
            allowed="0 to 16 MiB", flag="--packed-max-size"),
    Setting("segment_size", int, ("packed", "segment_size"), "ATOLL_SEGMENT_SIZE", "A process's open segment is "
            "sealed once it reaches this size.", unit="bytes", allowed="64 KiB to 4 GiB"),
    Setting("compaction_threshold", float, ("packed", "compaction_threshold"), "ATOLL_COMPACTION_THRESHOLD",
            "A sealed segment is compacted once this fraction of its bytes is dead.", unit="fraction",
            allowed="(0, 1]"),
    Setting("compaction_interval", float, ("packed", "compaction_interval"), "ATOLL_COMPACTION_INTERVAL",
            "Time between compaction passes.", unit=_SECONDS, allowed=_POSITIVE),
    Setting("compaction_grace", float, ("packed", "compaction_grace"), "ATOLL_COMPACTION_GRACE", "A compacted "
            "segment's file is deleted this long after its last move (readers may still hold it).", unit=_SECONDS,
            allowed=_POSITIVE),
    Setting("compaction_settle", float, ("packed", "compaction_settle"), "ATOLL_COMPACTION_SETTLE", "A segment "
            "sealed less than this ago is not compacted (PUTs may still be committing into it).", unit=_SECONDS,
            allowed=_POSITIVE),
    # admin and tiering
    Setting("admin_address", str, ("admin_address",), "ATOLL_ADMIN_ADDRESS", "Where the admin API, `/metrics` "
            "and the dashboard listen (docs/admin-api.md).", allowed="HOST:PORT or `off`"),
    Setting("warm_capacity", int, ("tiering", "warm_capacity"), "ATOLL_WARM_CAPACITY", "Bytes the warm tier may "
            "hold; 0: 90% of the data directory's filesystem.", unit="bytes", allowed=">= 0"),
    Setting("high_watermark", float, ("tiering", "high_watermark"), "ATOLL_HIGH_WATERMARK", "Eviction starts "
            "above this fraction of `warm_capacity`...", unit="fraction", allowed="low_watermark < x <= 1"),
    Setting("low_watermark", float, ("tiering", "low_watermark"), "ATOLL_LOW_WATERMARK", "...and stops below this "
            "one.", unit="fraction", allowed="0 < x < high_watermark"),
    Setting("fill_block_size", int, ("tiering", "fill_block_size"), "ATOLL_FILL_BLOCK_SIZE", "Read-through fills "
            "fetch and keep objects in blocks of this size.", unit="bytes", allowed="64 KiB to 1 GiB"),
    Setting("fill_parallelism", int, ("tiering", "fill_parallelism"), "ATOLL_FILL_PARALLELISM", "Ranged cold "
            "reads in flight per filling object.", unit="requests", allowed="1 to 1024"),
    Setting("drain_concurrency", int, ("tiering", "drain_concurrency"), "ATOLL_DRAIN_CONCURRENCY", "Drain "
            "uploads in flight, per process and per cold endpoint.", unit="transfers", allowed="1 to 1024"),
    Setting("drain_bandwidth", int, ("tiering", "drain_bandwidth"), "ATOLL_DRAIN_BANDWIDTH", "Cap on drain "
            "uploads per cold endpoint; 0: no cap.", unit="bytes/s", allowed=">= 0"),
    Setting("stage_concurrency", int, ("tiering", "stage_concurrency"), "ATOLL_STAGE_CONCURRENCY", "Transfers in "
            "flight per staging job, and per cold endpoint.", unit="transfers", allowed="1 to 1024"),
    Setting("cold_connect_timeout", float, ("tiering", "cold_connect_timeout"), "ATOLL_COLD_CONNECT_TIMEOUT",
            "Connecting to a cold store.", unit=_SECONDS, allowed=_POSITIVE),
    Setting("cold_first_byte_timeout", float, ("tiering", "cold_first_byte_timeout"), "ATOLL_COLD_FIRST_BYTE_TIMEOUT",
            "Per attempt, and the longest a client waits on the WAN for a miss.", unit=_SECONDS, allowed=_POSITIVE),
    Setting("cold_stall_timeout", float, ("tiering", "cold_stall_timeout"), "ATOLL_COLD_STALL_TIMEOUT", "A flowing "
            "cold transfer whose bytes stop this long is cut.", unit=_SECONDS, allowed=_POSITIVE),
    Setting("cold_retries", int, ("tiering", "cold_retries"), "ATOLL_COLD_RETRIES", "Extra attempts of idempotent "
            "cold requests (full-jitter backoff, within deadlines).", unit="attempts", allowed="0 to 10"),
    Setting("breaker_failures", int, ("tiering", "breaker_failures"), "ATOLL_BREAKER_FAILURES", "Consecutive cold "
            "failures that declare the link down (calls then fail at once; docs/resilience.md).", unit="failures",
            allowed="1 to 1024"),
    Setting("breaker_cooldown", float, ("tiering", "breaker_cooldown"), "ATOLL_BREAKER_COOLDOWN", "Time before the "
            "first probe of a down link; doubles up to `breaker_max_cooldown`.", unit=_SECONDS, allowed=_POSITIVE),
    Setting("breaker_max_cooldown", float, ("tiering", "breaker_max_cooldown"), "ATOLL_BREAKER_MAX_COOLDOWN",
            "Longest time between probes (one HEAD each): a healed link is noticed within this.", unit=_SECONDS,
            allowed=">= breaker_cooldown"),
    Setting("degraded_latency", float, ("tiering", "degraded_latency"), "ATOLL_DEGRADED_LATENCY", "Mean cold "
            "request latency above which a link is reported degraded.", unit=_SECONDS, allowed=_POSITIVE),
    Setting("demand_concurrency", int, ("tiering", "demand_concurrency"), "ATOLL_DEMAND_CONCURRENCY", "Cold "
            "transfers for client misses at once, per cold endpoint.", unit="transfers", allowed="1 to 1024"),
    Setting("demand_bandwidth", int, ("tiering", "demand_bandwidth"), "ATOLL_DEMAND_BANDWIDTH", "Cap on transfers "
            "for client misses per cold endpoint; 0: no cap.", unit="bytes/s", allowed=">= 0"),
    Setting("stage_bandwidth", int, ("tiering", "stage_bandwidth"), "ATOLL_STAGE_BANDWIDTH", "Cap on staging "
            "transfers per cold endpoint; 0: no cap.", unit="bytes/s", allowed=">= 0"),
    Setting("wan_aging", float, ("tiering", "wan_aging"), "ATOLL_WAN_AGING", "Longest a lower-priority transfer "
            "yields to a higher class, per chunk.", unit=_SECONDS, allowed=_POSITIVE),
    Setting("writethrough_on_partition", str, ("tiering", "writethrough_on_partition"),
            "ATOLL_WRITETHROUGH_ON_PARTITION", "What a write-through write does when its cold store is unreachable: "
            "refuse (503 at once) or journal it and drain after the heal.", allowed="refuse, writeback"),
    Setting("negative_ttl", float, ("tiering", "negative_ttl"), "ATOLL_NEGATIVE_TTL", "Cold 404 answers are "
            "remembered this long.", unit=_SECONDS, allowed=_POSITIVE),
    Setting("uncommitted_block_ttl", float, ("blob", "uncommitted_block_ttl"), "ATOLL_UNCOMMITTED_BLOCK_TTL",
            "Azure blocks never committed are collected after this (Azure: 7 days).", unit=_SECONDS,
            allowed=_POSITIVE),
    # cluster (#9)
    Setting("node", str, ("node",), "ATOLL_NODE", "This node's name, unique in the cluster (docs/cluster.md).",
            allowed="up to 64 letters, digits, `-`, `_`, `.`", flag="--node", default_text="`<hostname>-<s3 port>`"),
    Setting("node_timeout", float, ("cluster", "node_timeout"), "ATOLL_NODE_TIMEOUT", "A node whose heartbeat is "
            "older than this is dead: its work is taken over.", unit=_SECONDS,
            allowed=">= 2 x heartbeat_interval"),
    Setting("heartbeat_interval", float, ("cluster", "heartbeat_interval"), "ATOLL_HEARTBEAT_INTERVAL", "Time "
            "between a node's heartbeats.", unit=_SECONDS, allowed=_POSITIVE),
    # dashboard (#10)
    Setting("dashboard_sample_interval", float, ("dashboard", "sample_interval"), "ATOLL_DASHBOARD_SAMPLE_INTERVAL",
            "Time between the samples the dashboard's charts plot.", unit=_SECONDS, allowed=_POSITIVE),
    Setting("dashboard_history", float, ("dashboard", "history"), "ATOLL_DASHBOARD_HISTORY", "Samples kept in "
            "memory for the dashboard's charts.", unit=_SECONDS, allowed=">= sample_interval"),
    Setting("dashboard_session_ttl", float, ("dashboard", "session_ttl"), "ATOLL_DASHBOARD_SESSION_TTL", "A "
            "dashboard sign-in lasts this long.", unit=_SECONDS, allowed=_POSITIVE),
)
_DEFAULTS = {f.name: f.default for f in fields(Config) if f.default is not MISSING}
# setting name -> (type, file key path, env var): what ``load`` reads
_SETTINGS: dict[str, tuple[type, tuple[str, ...], str]] = {s.name: (s.kind, s.file_path, s.env) for s in SETTINGS}
_LOG_LEVELS = ("debug", "info", "warning", "error")


def _coerce(name: str, kind: type, value: Any, source: str, problems: list[str]) -> Any:
    try:
        if kind is tuple:
            if isinstance(value, str):
                return tuple(v.strip() for v in value.split(",") if v.strip())
            if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
                return tuple(value)
            raise ValueError
        if kind is int:
            if isinstance(value, (bool, float)):  # int(2.5) would silently truncate
                raise ValueError
            return int(value)
        if kind is float:
            if isinstance(value, bool) or not math.isfinite(float(value)):  # nan passes every "<= 0" check
                raise ValueError
            return float(value)
        if not isinstance(value, str):
            raise ValueError
        return value
    except (TypeError, ValueError):
        expected = {tuple: "a list of strings", int: "an integer", float: "a number", str: "a string"}[kind]
        problems.append(f"{name} ({source}): expected {expected}, got {value!r}")
        return None


_FILE_PATHS = {file_path for _, file_path, _ in _SETTINGS.values()}
_FILE_TABLES = {file_path[:i] for file_path in _FILE_PATHS for i in range(1, len(file_path))}


def _unknown_file_keys(table: Mapping[str, Any], at: tuple[str, ...] = ()) -> list[str]:
    """Keys of the TOML file that name no setting, at any depth (a typo in [timeouts] must not pass silently)."""
    found = []
    for key, value in table.items():
        here = (*at, key)
        if here in _FILE_TABLES:
            if isinstance(value, Mapping):
                found.extend(_unknown_file_keys(value, here))
            else:
                found.append(f"{'.'.join(here)} must be a table ([{'.'.join(here)}]), got {value!r}")
        elif here not in _FILE_PATHS:
            found.append(f"unknown setting {'.'.join(here)!r}")
    return found


def _dig(table: Mapping[str, Any], path: tuple[str, ...]) -> Any:
    node: Any = table
    for part in path:
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


def load(config_file: str | None = None, flags: Mapping[str, Any] | None = None,
         environ: Mapping[str, str] | None = None) -> Config:
    environ = os.environ if environ is None else environ
    problems: list[str] = []
    values: dict[str, Any] = {}
    file_table: dict[str, Any] = {}
    path = config_file or environ.get("ATOLL_CONFIG")
    if path:
        try:
            with open(path, "rb") as f:
                file_table = tomllib.load(f)
        except FileNotFoundError:
            problems.append(f"config file {path}: not found")
        except tomllib.TOMLDecodeError as exc:
            problems.append(f"config file {path}: not valid TOML ({exc})")
        except OSError as exc:
            problems.append(f"config file {path}: cannot be read ({exc.strerror})")
        cold_table = file_table.pop("cold", {}) if isinstance(file_table, dict) else {}
        if not isinstance(cold_table, Mapping) or not all(isinstance(v, str) for v in cold_table.values()):
            problems.append(f"config file {path}: [cold] must be a table of strings (obstore settings)")
        else:
            values["cold_options"] = {str(k).lower(): v for k, v in cold_table.items()}
        problems.extend(f"config file {path}: {problem}" for problem in _unknown_file_keys(file_table))
    for name, (kind, file_path, env_var) in _SETTINGS.items():
        raw = _dig(file_table, file_path)
        if raw is not None:
            values[name] = _coerce(name, kind, raw, f"config file {path}", problems)
        if env_var in environ and environ[env_var] != "":
            values[name] = _coerce(name, kind, environ[env_var], f"environment {env_var}", problems)
        if flags and flags.get(name) is not None:
            values[name] = _coerce(name, kind, flags[name], "command line", problems)
    config = replace(Config(), **{k: v for k, v in values.items() if v is not None})
    problems.extend(validate(config))
    if problems:
        raise ConfigError(problems)
    return config


def _check_address(name: str, address: str, problems: list[str]) -> None:
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        problems.append(f"{name}: expected HOST:PORT (for example 127.0.0.1:9000), got {address!r}")


def validate(config: Config) -> list[str]:
    problems: list[str] = []
    _check_address("s3_address", config.s3_address, problems)
    if config.blob_listen != "off":
        _check_address("blob_listen", config.blob_listen, problems)
    if not 1 <= config.workers <= 256:
        problems.append(f"workers: expected 1 to 256, got {config.workers}")
    if config.log_level.lower() not in _LOG_LEVELS:
        problems.append(f"log_level: expected one of {', '.join(_LOG_LEVELS)}, got {config.log_level!r}")
    for name in ("shutdown_grace", "keep_alive_timeout", "request_head_timeout", "stall_timeout", "max_clock_skew"):
        if getattr(config, name) <= 0:
            problems.append(f"{name}: expected a positive number of seconds, got {getattr(config, name)}")
    if not config.region or not all(c.isalnum() or c == "-" for c in config.region):
        problems.append(f"region: expected a region name such as us-east-1, got {config.region!r}")
    if config.metadata and not is_postgres(config.metadata):
        if "://" in config.metadata and not config.metadata.startswith("sqlite://"):
            problems.append(f"metadata: expected postgresql://..., postgres://... or a SQLite path; "
                            f"{config.metadata.split('://', 1)[0]!r} is not a metadata engine")
        elif not (config.metadata.startswith("sqlite://") or config.metadata.endswith((".db", ".sqlite3", ".sqlite"))):
            problems.append(f"metadata: expected a PostgreSQL URL (postgresql://user@host/db) or a SQLite path "
                            f"(sqlite:///path or *.sqlite3), got {config.metadata!r}")
    if not 1 <= config.min_part_size <= 5 << 30:
        problems.append(f"min_part_size: expected 1 byte to 5 GiB, got {config.min_part_size}")
    if not 0 <= config.packed_max_size <= 16 << 20:
        problems.append(f"packed_max_size: expected 0 (no packing) to 16 MiB, got {config.packed_max_size}")
    if not (64 << 10) <= config.segment_size <= (4 << 30):
        problems.append(f"segment_size: expected 64 KiB to 4 GiB, got {config.segment_size}")
    if not 0 < config.compaction_threshold <= 1:
        problems.append(f"compaction_threshold: expected a fraction in (0, 1], got {config.compaction_threshold}")
    for name in ("compaction_interval", "compaction_grace", "compaction_settle"):
        if getattr(config, name) <= 0:
            problems.append(f"{name}: expected a positive number of seconds, got {getattr(config, name)}")
    if config.admin_address != "off":
        _check_address("admin_address", config.admin_address, problems)
    if config.warm_capacity < 0:
        problems.append(f"warm_capacity: expected bytes >= 0, got {config.warm_capacity}")
    if not 0 < config.low_watermark < config.high_watermark <= 1:
        problems.append(f"low_watermark/high_watermark: expected 0 < low < high <= 1, got "
                        f"{config.low_watermark}/{config.high_watermark}")
    if not (64 << 10) <= config.fill_block_size <= (1 << 30):
        problems.append(f"fill_block_size: expected 64 KiB to 1 GiB, got {config.fill_block_size}")
    for name in ("fill_parallelism", "drain_concurrency", "stage_concurrency", "demand_concurrency",
                 "breaker_failures"):
        if not 1 <= getattr(config, name) <= 1024:
            problems.append(f"{name}: expected 1 to 1024, got {getattr(config, name)}")
    for name in ("drain_bandwidth", "demand_bandwidth", "stage_bandwidth"):
        if getattr(config, name) < 0:
            problems.append(f"{name}: expected bytes/s >= 0, got {getattr(config, name)}")
    if not 0 <= config.cold_retries <= 10:
        problems.append(f"cold_retries: expected 0 to 10, got {config.cold_retries}")
    if config.writethrough_on_partition not in ("refuse", "writeback"):
        problems.append(f"writethrough_on_partition: expected refuse or writeback, got "
                        f"{config.writethrough_on_partition!r}")
    if config.breaker_max_cooldown < config.breaker_cooldown:
        problems.append("breaker_max_cooldown: expected at least breaker_cooldown")
    for name in ("cold_connect_timeout", "cold_first_byte_timeout", "cold_stall_timeout", "negative_ttl",
                 "breaker_cooldown", "degraded_latency", "wan_aging", "uncommitted_block_ttl"):
        if getattr(config, name) <= 0:
            problems.append(f"{name}: expected a positive number of seconds, got {getattr(config, name)}")
    if config.node and not all(c.isalnum() or c in "-_." for c in config.node) or len(config.node) > 64:
        problems.append(f"node: expected up to 64 letters, digits, '-', '_' or '.', got {config.node!r}")
    if config.heartbeat_interval <= 0 or config.node_timeout < 2 * config.heartbeat_interval:
        problems.append(f"cluster.node_timeout/heartbeat_interval: expected heartbeat_interval > 0 and node_timeout "
                        f"at least twice it, got {config.node_timeout}/{config.heartbeat_interval}")
    if config.log_format not in ("json", "text"):
        problems.append(f"log_format: expected json or text, got {config.log_format!r}")
    for name in ("dashboard_sample_interval", "dashboard_session_ttl"):
        if getattr(config, name) <= 0:
            problems.append(f"{name}: expected a positive number of seconds, got {getattr(config, name)}")
    if config.dashboard_history < config.dashboard_sample_interval:
        problems.append(f"dashboard_history: expected at least dashboard_sample_interval, got "
                        f"{config.dashboard_history}")
    if os.path.exists(config.data_dir) and not os.path.isdir(config.data_dir):
        problems.append(f"data_dir: {config.data_dir} exists and is not a directory")
    return problems


def setting_names() -> list[str]:
    return [f.name for f in fields(Config) if f.name not in ("extra", "cold_options")]
