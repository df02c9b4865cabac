"""Cold endpoints as status and ``/metrics`` report them: one process's view of an ``Endpoint`` as a plain dict,
and the merge of several processes' views into one.

With ``--workers N`` every worker has its own breaker, counters and rates for the same endpoint (see
atoll.admin.peerhealth), so the merge is what an operator needs to know about the link: the worst state wins
(one worker that cannot reach the store is a partition to its clients), counters and rates are summed, times
are the latest (or, for when the breaker opened, the earliest), latency is the worst worker's.
"""

from __future__ import annotations

import re

from atoll.stores.cold.endpoint import CLOSED, Endpoint
from atoll.stores.cold.traffic import Traffic

STATES = ("healthy", "degraded", "partitioned")  # in order of severity; also the gauge's values 0, 1, 2
BREAKER_STATES = ("closed", "half-open", "open")
CLASSES = tuple(t.value for t in Traffic)
_CLASS_SUMS = ("requests", "failures", "rejected", "bytes_in", "bytes_out", "bytes_in_per_second",
               "bytes_out_per_second", "active", "yielded_seconds")
_USERINFO = re.compile(r"(https?://)[^/@]*@")


def public_key(key: str) -> str:
    """An endpoint key safe to show: an endpoint URL given with ``user:password@`` keeps its host only."""
    return _USERINFO.sub(r"\1", key)


def endpoint_view(endpoint: Endpoint) -> dict:
    """What this process knows about ``endpoint``; rates and ``last_minute`` cover the last 60 s."""
    health = endpoint.health
    breaker = health.breaker
    minute = health.window.totals()
    traffic = {}
    for kind in Traffic:
        stats = health.per_class[kind.value]
        rates = stats.window.totals()
        traffic[kind.value] = {
            "requests": stats.requests, "failures": stats.failures, "rejected": stats.rejected,
            "bytes_in": stats.bytes_in, "bytes_out": stats.bytes_out,
            "bytes_in_per_second": rates["bytes_in_per_second"],
            "bytes_out_per_second": rates["bytes_out_per_second"],
            "active": endpoint.wan.active.get(kind, 0),
            "yielded_seconds": round(endpoint.wan.yielded.get(kind, 0.0), 3),
        }
    return {
        "endpoint": public_key(endpoint.key), "state": health.state,
        "contacted": bool(health.last_success or health.last_failure),
        "breaker": {"state": breaker.state, "opened_at": None if breaker.state == CLOSED else breaker.opened_at,
                    "retry_after": round(breaker.retry_after(), 3), "opens": breaker.opens},
        "consecutive_failures": breaker.consecutive_failures,
        "last_success": health.last_success or None, "last_failure": health.last_failure or None,
        "last_error": health.last_error or None,
        "latency_ewma": round(health.latency_ewma, 6), "retries": health.retries,
        "last_minute": minute,
        "traffic": traffic,
        "transfers": len(endpoint.transfers),
        "workers": 1,
    }


def _worst(values, order: tuple[str, ...]) -> str:
    return max(values, key=lambda v: order.index(v) if v in order else len(order))


def merge_views(views: list[dict]) -> dict:
    """One view of an endpoint from the views of several processes (the first one's key is kept)."""
    if len(views) == 1:
        return views[0]
    contacted = [v for v in views if v["contacted"]] or views
    failed = [v for v in views if v["last_failure"]]
    successes = [v["last_success"] for v in views if v["last_success"]]
    open_since = [v["breaker"]["opened_at"] for v in views if v["breaker"]["opened_at"]]
    not_closed = [v["breaker"]["retry_after"] for v in views if v["breaker"]["state"] != "closed"]
    minutes = [v["last_minute"] for v in views]
    requests = sum(m["requests"] for m in minutes)
    failures = sum(m["failures"] for m in minutes)
    answered = [(m["mean_latency"], m["requests"] - m["failures"]) for m in minutes]
    ok = sum(n for _, n in answered)
    return {
        "endpoint": views[0]["endpoint"],
        "state": _worst([v["state"] for v in views], STATES),
        "contacted": any(v["contacted"] for v in views),
        "breaker": {"state": _worst([v["breaker"]["state"] for v in views], BREAKER_STATES),
                    "opened_at": min(open_since) if open_since else None,
                    "retry_after": min(not_closed) if not_closed else 0.0,
                    "opens": sum(v["breaker"]["opens"] for v in views)},
        "consecutive_failures": max(v["consecutive_failures"] for v in views),
        "last_success": max(successes) if successes else None,
        "last_failure": max(v["last_failure"] for v in failed) if failed else None,
        "last_error": max(failed, key=lambda v: v["last_failure"])["last_error"] if failed else None,
        "latency_ewma": max(v["latency_ewma"] for v in contacted),
        "retries": sum(v["retries"] for v in views),
        "last_minute": {
            "requests": requests, "failures": failures,
            "error_rate": round(failures / requests, 4) if requests else 0.0,
            "bytes_in_per_second": round(sum(m["bytes_in_per_second"] for m in minutes), 1),
            "bytes_out_per_second": round(sum(m["bytes_out_per_second"] for m in minutes), 1),
            "mean_latency": round(sum(lat * n for lat, n in answered) / ok, 6) if ok else 0.0,
        },
        "traffic": {kind: {name: _sum([v["traffic"].get(kind, {}).get(name, 0) for v in views])
                           for name in _CLASS_SUMS} for kind in CLASSES},
        "transfers": sum(v["transfers"] for v in views),
        "workers": sum(v["workers"] for v in views),
    }


def _sum(values: list) -> int | float:
    total = sum(values)
    return round(total, 3) if isinstance(total, float) else total
