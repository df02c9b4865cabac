"""The dashboard's pure pieces: the bounded history of samples (atoll.admin.dashboard.history), the data-field path
syntax (paths), the banner's wording (data.banner) and the number formats (units)."""

from __future__ import annotations

from atoll.admin.dashboard.data import banner, job_entry
from atoll.admin.dashboard.history import History
from atoll.admin.dashboard.paths import field_path, lookup, row_keys, split_path
from atoll.admin.dashboard import units


def test_the_history_keeps_the_newest_samples_only():
    history = History(interval=5.0, keep_seconds=60.0)
    assert history.capacity == 13
    for n in range(100):
        history.add({"time": 1000.0 + 5 * n, "n": n})
    assert len(history) == 13
    kept = history.since(0.0)
    assert [s["n"] for s in kept] == list(range(87, 100))


def test_history_since_answers_the_samples_after_a_time_in_order():
    history = History(interval=1.0, keep_seconds=100.0)
    for n in range(10):
        history.add({"time": 100.0 + n})
    assert [s["time"] for s in history.since(105.0)] == [106.0, 107.0, 108.0, 109.0]
    assert [s["time"] for s in history.since(105.5)] == [106.0, 107.0, 108.0, 109.0]
    assert history.since(109.0) == []
    assert history.since(1e12) == []
    assert len(history.since(-1.0)) == 10


def test_a_short_history_keeps_two_samples_at_least():
    history = History(interval=10.0, keep_seconds=1.0)
    for n in range(5):
        history.add({"time": float(n)})
    assert [s["time"] for s in history.since(0.0)] == [3.0, 4.0]


def test_paths_escape_dots_and_percent_signs_in_keys():
    document = {"buckets": {"data.set": {"backlog": {"objects": 3}}, "50%": {"x": 1}},
                "cold": {"http://127.0.0.1:5000": {"state": "partitioned"}},
                "audit": {"entries": [{"id": "a", "action": "job.create"}, {"id": "b"}]}}
    path = field_path(["buckets", "data.set", "backlog", "objects"])
    assert path == "buckets.data%2Eset.backlog.objects"
    assert split_path(path) == ["buckets", "data.set", "backlog", "objects"]
    assert lookup(document, split_path(path)) == 3
    assert field_path(["buckets", "50%", "x"]) == "buckets.50%25.x"
    assert lookup(document, split_path("buckets.50%25.x")) == 1
    cold = field_path(["cold", "http://127.0.0.1:5000", "state"])
    assert cold == "cold.http://127%2E0%2E0%2E1:5000.state"
    assert lookup(document, split_path(cold)) == "partitioned"
    assert lookup(document, split_path("audit.entries.0.action")) == "job.create"
    for missing in ("audit.entries.2.action", "audit.entries.x", "buckets.nope.backlog", "buckets.data.set"):
        assert lookup(document, split_path(missing)) is None, missing
    assert row_keys(document["buckets"]) == ["data.set", "50%"]
    assert row_keys(document["audit"]["entries"]) == ["a", "b"]
    assert row_keys([1, 2]) == ["0", "1"] and row_keys(None) == []


def _endpoint(state: str, since: float | None = None) -> dict:
    return {"state": state, "partitioned_since": since}


def test_the_banner_is_red_while_a_cold_store_is_partitioned():
    drain = {"paused": False, "backlog": {"objects": 1234, "bytes": 3 << 30, "oldest_age_seconds": 60.0}}
    alive = {"n1": {"state": "alive"}}
    red = banner({"a": _endpoint("partitioned", 1795640520.0)}, drain, alive)
    assert red["level"] == "critical" and red["partitioned_since"] == 1795640520.0
    assert red["text"].startswith("WAN partitioned since ")
    assert red["text"].endswith("— writes are journaled, 1\u202f234 writes / 3.0 GiB waiting")
    assert red["waiting"] == {"objects": 1234, "bytes": 3 << 30}
    some = banner({"a": _endpoint("partitioned", 10.0), "b": _endpoint("healthy")}, drain, alive)
    assert some["level"] == "critical" and some["text"].startswith("1 of 2 cold endpoints partitioned since")
    assert banner({"a": _endpoint("degraded")}, drain, alive)["level"] == "warning"
    assert banner({"a": _endpoint("healthy")}, {**drain, "paused": True}, alive)["text"].startswith("Drain paused")
    assert banner({"a": _endpoint("healthy")}, drain, {"n1": {"state": "dead"}})["level"] == "warning"
    green = banner({"a": _endpoint("healthy")}, drain, alive)
    assert green["level"] == "ok" and green["text"].startswith("All cold stores healthy")
    assert banner({}, drain, alive)["text"] == "No bucket is linked to a cold store"


def test_job_progress_fractions():
    view = {"id": "j", "kind": "stage", "bucket": "b", "state": "running", "priority": "normal", "created": 1.0,
            "updated": 2.0, "spec": {"prefix": "p/", "pin": True}, "error": None,
            "progress": {"bytes_total": 400, "bytes_done": 100, "objects_total": 4, "objects_done": 3}}
    entry = job_entry(view)
    assert entry["progress"]["fraction"] == 0.25 and entry["prefix"] == "p/" and entry["pin"] is True
    assert job_entry({**view, "progress": {"objects_total": 4, "objects_done": 3}})["progress"]["fraction"] == 0.75
    assert job_entry({**view, "progress": {}})["progress"]["fraction"] == 0.0
    assert job_entry({**view, "state": "done", "progress": {}})["progress"]["fraction"] == 1.0


def test_number_formats():
    assert units.format_bytes(0) == "0 B" and units.format_bytes(1023) == "1023 B"
    assert units.format_bytes(1536) == "1.5 KiB" and units.format_bytes(3 << 30) == "3.0 GiB"
    assert units.format_count(1234567) == "1\u202f234\u202f567" and units.format_count(2.5) == "2.5"
    assert units.format_seconds(0.25) == "250 ms" and units.format_seconds(12.34) == "12.3 s"
    assert units.format_seconds(250) == "4 m 10 s" and units.format_seconds(3 * 3600 + 300) == "3 h 05 m"
    assert units.format_seconds(50 * 3600) == "2 d 2 h"
    assert units.format_percent(0.5) == "50.0 %" and units.format_rate(2048) == "2.0 KiB/s"
    assert units.format_value(None, "bytes") == "–" and units.format_value(True) == "yes"
    assert units.format_value(["a", "b"]) == "a, b" and units.format_value([], "text") == "–"
