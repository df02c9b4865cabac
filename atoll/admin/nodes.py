"""The ``nodes`` section of the status document (#9): every node of the cluster, its health and what it holds.

From the metadata store only, so any node (or ``atoll status`` without a server) answers the same: the nodes'
heartbeat rows, the cluster leases (singleton tasks, read-through blocks being fetched, cold multipart uploads),
drain claims, running jobs and compactions, each under the node named in its owner (``node:pid:start``).
"""

from __future__ import annotations

import time

from atoll.core import cluster

NODE_STATES = ("alive", "dead", "stopped")  # the bounded label set of atoll_cluster_nodes{state}


def _owner_node(owner: str) -> str:
    return cluster.split_owner(owner)[0]


async def nodes_status(meta, now: float | None = None) -> list[dict]:
    now = time.time() if now is None else now
    current = cluster.current()
    timeout = current.node_timeout if current is not None else cluster.NODE_TIMEOUT
    records = await meta.list_nodes()
    leases = [lease for lease in await meta.list_cluster_leases() if lease.lease_until >= now
              or lease.name.startswith("cold-upload:")]
    jobs = [job for job in await meta.list_jobs(limit=1000, active_only=True) if job.state == "running" and job.owner]
    compactions = [s for s in await meta.list_segments() if s.state == "compacting"]
    drain_claims = await meta.drain_claims_by_owner()
    views = []
    for record in records:
        info = dict(record.info)
        age = max(0.0, now - record.heartbeat)
        state = "stopped" if info.pop("stopped", False) else "alive" if age < timeout else "dead"
        mine = [lease for lease in leases if _owner_node(lease.owner) == record.node]
        views.append({
            "node": record.node, "address": record.address, "state": state,
            "heartbeat_age_seconds": round(age, 3), "started": record.started,
            "version": info.pop("version", None), "pid": info.pop("pid", None), "workers": info.pop("workers", None),
            "leases": sorted(lease.name for lease in mine
                             if not lease.name.startswith(("fill:", "cold-upload:"))),
            "fills": sum(1 for lease in mine if lease.name.startswith("fill:")),
            "cold_uploads": sum(1 for lease in mine if lease.name.startswith("cold-upload:")),
            "drain_claims": sum(n for owner, n in drain_claims.items() if _owner_node(owner) == record.node),
            "jobs": sorted(job.job_id for job in jobs if _owner_node(job.owner) == record.node),
            "compactions": sorted(s.segment_id for s in compactions if _owner_node(s.owner) == record.node),
            "info": info,
        })
    return views


def count_by_state(views: list[dict]) -> dict[str, int]:
    counts = {state: 0 for state in NODE_STATES}
    for view in views:
        counts[view["state"]] += 1
    return counts
