"""Counters and histograms exported in Prometheus text format on the admin port (``/metrics``).

prometheus_client keeps them per process; with several workers it aggregates through files in
``PROMETHEUS_MULTIPROC_DIR``, which ``atoll serve`` sets up before any worker starts (see
``atoll.server.lifecycle``). Gauges that describe shared state (backlog, resident bytes) are read from the
metadata store at scrape time instead, so every worker reports the same truth.

Names follow Prometheus' conventions (docs/metrics.md lists every family and says which labels are bounded by
what): base units in the name (``_bytes``, ``_seconds``), what a counter counts before its ``_total`` (which
prometheus_client appends), and labels only from small fixed sets or from tables an operator controls (linked
buckets, tenants) — never keys or request ids. A new family goes into docs/metrics.md too; a test checks both
ways against a live scrape.
"""

from __future__ import annotations

from prometheus_client import Counter, Histogram

TIER_HITS = Counter("atoll_tier_hits", "Reads of linked buckets answered from the warm tier", ["bucket"])
TIER_MISSES = Counter("atoll_tier_misses", "Reads of linked buckets that needed the cold store", ["bucket"])
COLD_BYTES_READ = Counter("atoll_cold_read_bytes", "Bytes read from cold stores", ["traffic"])
COLD_BYTES_WRITTEN = Counter("atoll_cold_written_bytes", "Bytes written to cold stores", ["traffic"])
COLD_REQUESTS = Counter("atoll_cold_requests", "Requests to cold stores", ["traffic", "outcome"])
FILL_SECONDS = Histogram("atoll_fill_block_seconds", "Time to fetch and persist one read-through block",
                         buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
EVICTIONS = Counter("atoll_evicted_objects", "Objects evicted from the warm tier")
EVICTED_BYTES = Counter("atoll_evicted_bytes", "Bytes evicted from the warm tier")
DRAINED = Counter("atoll_drained_objects", "Journaled writes and deletes propagated to cold stores", ["op"])
DRAINED_BYTES = Counter("atoll_drained_bytes", "Bytes uploaded by the drain")
DRAIN_FAILURES = Counter("atoll_drain_failures", "Drain attempts that failed and will be retried")
STAGED = Counter("atoll_staged_objects", "Objects made resident by staging jobs")
STAGED_BYTES = Counter("atoll_staged_bytes", "Bytes fetched by staging jobs")
WRITETHROUGH_DEGRADED = Counter("atoll_writethrough_degraded_writes", "Write-through writes journaled for the drain "
                                "because the cold store was unreachable", ["bucket"])
COLD_TENANT_BYTES = Counter("atoll_cold_tenant_bytes", "Bytes moved on cold links, by tenant and traffic class",
                            ["tenant", "traffic"])
# QoS (#7): moved here from each worker's per-tenant counts once a second (atoll.core.qos).
TENANT_REQUESTS = Counter("atoll_tenant_requests", "Requests per tenant, throttled ones included", ["tenant"])
TENANT_THROTTLED = Counter("atoll_tenant_throttled_requests", "Requests refused by a tenant's or bucket's rate limits",
                           ["tenant"])
TENANT_BYTES = Counter("atoll_tenant_bytes", "Body bytes per tenant: in (requests), out (answers)",
                       ["tenant", "direction"])
# packed store (#8)
GROUP_COMMIT_RECORDS = Histogram("atoll_group_commit_records", "Records made durable by one segment fdatasync",
                                 buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096))
GROUP_COMMIT_SECONDS = Histogram("atoll_group_commit_seconds", "Time to write and fdatasync one batch of records",
                                 buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1))
COMPACTIONS = Counter("atoll_compactions", "Segments compacted (their live records moved, the file retired)")
COMPACTION_MOVED_BYTES = Counter("atoll_compaction_moved_bytes", "Live record bytes copied by compaction")
COMPACTION_RECLAIMED_BYTES = Counter("atoll_compaction_reclaimed_bytes",
                                     "Bytes of segment files deleted after compaction")
