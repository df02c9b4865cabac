"""Opening a data directory's stores and building the namespace over them: what `atoll serve` and the CLI's
offline commands share. Kept apart from atoll.server.lifecycle so that a CLI command does not import the HTTP
front ends (about a second of start-up per command)."""

from __future__ import annotations

import os

from atoll.config import Config
from atoll.core.namespace import Namespace
from atoll.core.packing import PackedSettings
from atoll.core.tiering.jobs import JobRunner
from atoll.core.tiering.tier import Tiering, TierSettings
from atoll.stores.cold.endpoint import BreakerSettings, TrafficPolicy
from atoll.stores.cold.store import Timeouts as ColdTimeouts
from atoll.stores.data.files import FileDataStore
from atoll.stores.meta import open_metastore
from atoll.stores.meta.dsn import redact
from atoll.stores.meta.sql import SqlMetaStore


class StartupError(Exception):
    """Atoll cannot start; the message says why and what to do."""


def prepare_data_dir(config: Config) -> None:
    try:
        os.makedirs(config.data_dir, mode=0o700, exist_ok=True)
    except OSError as exc:
        raise StartupError(f"cannot create data directory {config.data_dir}: {exc.strerror}") from None
    if not os.access(config.data_dir, os.W_OK):
        raise StartupError(f"data directory {config.data_dir} is not writable")


def open_stores(config: Config) -> tuple[SqlMetaStore, FileDataStore]:
    prepare_data_dir(config)
    meta = open_metastore(config.metadata, os.path.join(config.data_dir, "meta.sqlite3"))
    try:
        meta.open_sync()
    except Exception as exc:  # noqa: BLE001 - reported as a start-up problem, not a traceback
        raise StartupError(f"cannot open metadata store {redact(config.metadata_path)}: {exc}") from None
    return meta, FileDataStore(config.data_dir)


def tier_settings(config: Config) -> TierSettings:
    return TierSettings(
        fill_block_size=config.fill_block_size, fill_parallelism=config.fill_parallelism,
        negative_ttl=config.negative_ttl, warm_capacity=config.warm_capacity,
        high_watermark=config.high_watermark, low_watermark=config.low_watermark,
        drain_concurrency=config.drain_concurrency, drain_bandwidth=config.drain_bandwidth,
        stage_concurrency=config.stage_concurrency,
        timeouts=ColdTimeouts(connect=config.cold_connect_timeout, first_byte=config.cold_first_byte_timeout,
                              stall=config.cold_stall_timeout, retries=config.cold_retries),
        breaker=BreakerSettings(failures=config.breaker_failures, cooldown=config.breaker_cooldown,
                                max_cooldown=config.breaker_max_cooldown),
        traffic=TrafficPolicy(
            concurrency={"demand": config.demand_concurrency, "stage": config.stage_concurrency,
                         "drain": config.drain_concurrency},
            bandwidth={"demand": config.demand_bandwidth, "stage": config.stage_bandwidth,
                       "drain": config.drain_bandwidth},
            aging=config.wan_aging),
        degraded_latency=config.degraded_latency, writethrough_on_partition=config.writethrough_on_partition,
        cold_defaults=dict(config.cold_options), secrets_path=config.cold_secrets_path,
    )


def build_namespace(config: Config, meta: SqlMetaStore, data: FileDataStore) -> Namespace:
    tier = Tiering(meta, data, tier_settings(config))
    ns = Namespace(meta, data, region=config.region, min_part_size=config.min_part_size, tier=tier,
                   uncommitted_block_ttl=config.uncommitted_block_ttl,
                   packed=PackedSettings(max_size=config.packed_max_size, segment_size=config.segment_size,
                                         compaction_threshold=config.compaction_threshold,
                                         compaction_interval=config.compaction_interval,
                                         compaction_grace=config.compaction_grace,
                                         compaction_settle=config.compaction_settle))
    tier.namespace = ns
    tier.job_runner = JobRunner(tier)  # runs only where start_background(primary=True) starts it
    return ns
