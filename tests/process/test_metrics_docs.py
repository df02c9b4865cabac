"""/metrics against its documentation and the Grafana dashboard, on a real server with real traffic.

One ``atoll serve`` with a write-back bucket linked to moto S3 (misses, hits, a drain, a staging job), a
write-through bucket whose cold store (behind a FaultProxy) refuses connections (a write journaled by
``writethrough_on_partition = writeback``) and a tenant held to one request per second (throttled requests),
so that every labelled family has samples. Then one scrape, parsed with prometheus_client's parser:

* every family in /metrics is in docs/metrics.md, with the same type and label names, and every metric the
  page names is in /metrics (both directions);
* every metric used by a panel of deploy/grafana/atoll.json (and by its template variables) is in /metrics, and
  every Grafana panel docs/metrics.md names exists;
* names follow the conventions the page states: counters end in ``_total``, no label carries a key.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError
from prometheus_client.parser import text_string_to_metric_families

from coldstores import FaultProxy, fresh_name
from harness import AtollProcess, admin_call, metric, metrics_text, stop_cleanly, wait_until

pytestmark = pytest.mark.timeout(120)

ROOT = Path(__file__).resolve().parents[2]
METRICS_DOC = ROOT / "docs" / "metrics.md"
GRAFANA = ROOT / "deploy" / "grafana" / "atoll.json"
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")
SERVER_ENV = {"ATOLL_FILL_BLOCK_SIZE": str(64 << 10), "ATOLL_WRITETHROUGH_ON_PARTITION": "writeback",
              "ATOLL_COLD_CONNECT_TIMEOUT": "1", "ATOLL_COLD_FIRST_BYTE_TIMEOUT": "1", "ATOLL_COLD_RETRIES": "0",
              "ATOLL_BREAKER_FAILURES": "1", "ATOLL_BREAKER_COOLDOWN": "0.5", "ATOLL_BREAKER_MAX_COOLDOWN": "2"}


# --- what the documents say ---------------------------------------------------------------------------------------

def documented() -> dict[str, dict]:
    """The rows of docs/metrics.md's tables under "Every metric": name -> {type, labels, panels}."""
    rows = {}
    section = ""
    for line in METRICS_DOC.read_text().splitlines():
        if line.startswith("## "):
            section = line
        if section != "## Every metric" or not line.startswith("| `atoll_"):
            continue
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        assert len(cells) == 5, f"docs/metrics.md: not metric | type | labels | meaning | panels: {line}"
        name, kind, labels, _, panels = cells
        name = name.strip("`")
        assert name not in rows, f"{name} is documented twice"
        rows[name] = {"type": kind, "labels": set(re.findall(r"`(\w+)`", labels)),
                      "panels": set(re.findall(r'"([^"]+)"', panels))}
    return rows


def grafana_panels(dashboard: dict) -> list[dict]:
    """Every panel, those inside collapsed rows too (rows themselves excluded)."""
    found = []
    for panel in dashboard["panels"]:
        found.extend(grafana_panels(panel) if panel.get("panels") else [])
        if panel["type"] != "row":
            found.append(panel)
    return found


def metric_names(expr: str) -> set[str]:
    return set(re.findall(r"\batoll_[a-z0-9_]+", expr))


# --- the live scrape ------------------------------------------------------------------------------------------------

def exposed(text: str) -> dict[str, dict]:
    """The scrape's families by the name a query uses: counters with ``_total``, histograms by their base name
    -> {type, labels (label names of every sample, ``le`` excepted), samples}."""
    families = {}
    for family in text_string_to_metric_families(text):
        name = family.name + "_total" if family.type == "counter" else family.name
        labels = {label for sample in family.samples for label in sample.labels} - {"le"}
        families[name] = {"type": family.type, "labels": labels, "samples": family.samples}
    return families


def resolves(name: str, families: dict[str, dict]) -> bool:
    """``name`` as a query uses it is a family of the scrape: itself, or a histogram's _bucket/_sum/_count."""
    if name in families:
        return True
    for suffix in HISTOGRAM_SUFFIXES:
        base = name.removesuffix(suffix)
        if base != name and families.get(base, {}).get("type") == "histogram":
            return True
    return False


@pytest.fixture(scope="module")
def scrape(tmp_path_factory, moto_s3):
    """The /metrics text of a server after traffic of every kind the families count."""
    server = AtollProcess(data_dir=str(tmp_path_factory.mktemp("metrics-docs") / "data"),
                          extra_env=SERVER_ENV).start()
    proxy = FaultProxy(("127.0.0.1", moto_s3.port))
    try:
        yield make_traffic(server, moto_s3, proxy)
    finally:
        proxy.close()
        stop_cleanly(server)


def link(server: AtollProcess, moto_s3, mode: str, endpoint: str) -> tuple[str, str]:
    cold_bucket = moto_s3.create_bucket(fresh_name("metrics-cold"))
    bucket = fresh_name(f"metrics-{mode}")
    server.client().create_bucket(Bucket=bucket)
    admin_call(server, "PUT", f"/api/v1/buckets/{bucket}/link",
               {"url": f"s3://{cold_bucket}/data", "mode": mode,
                "options": {"endpoint": endpoint, "access_key_id": moto_s3.access_key,
                            "secret_access_key": moto_s3.secret_key, "region": moto_s3.region}})
    return bucket, cold_bucket


def make_traffic(server: AtollProcess, moto_s3, proxy: FaultProxy) -> str:
    s3 = server.client()
    cold = moto_s3.client()
    # Write-back: one miss and two hits, a write that drains, a staging job.
    bucket, cold_bucket = link(server, moto_s3, "writeback", moto_s3.endpoint)
    cold.put_object(Bucket=cold_bucket, Key="data/read/once", Body=b"r" * 100_000)
    for _ in range(3):
        assert s3.get_object(Bucket=bucket, Key="read/once")["Body"].read() == b"r" * 100_000
    s3.put_object(Bucket=bucket, Key="written", Body=b"w" * 5000)
    for i in range(3):
        cold.put_object(Bucket=cold_bucket, Key=f"data/staged/{i}", Body=b"s" * 70_000)
    job = admin_call(server, "POST", "/api/v1/jobs", {"kind": "stage", "bucket": bucket, "prefix": "staged/"})
    wait_until(lambda: admin_call(server, "GET", f"/api/v1/jobs/{job['id']}")["state"] == "done", 30,
               "the staging job to finish")
    # Write-through to a cold store that refuses connections: acknowledged, journaled, counted.
    degraded, _ = link(server, moto_s3, "writethrough", proxy.endpoint())
    proxy.refuse()
    s3.put_object(Bucket=degraded, Key="during-partition", Body=b"p" * 1000)
    # A tenant held to one request per second.
    tenant = fresh_name("metrics-tenant")
    admin_call(server, "POST", "/api/v1/tenants", {"name": tenant})
    key = admin_call(server, "POST", f"/api/v1/tenants/{tenant}/keys", {"name": "loader", "role": "admin"})
    limited = boto3.client("s3", endpoint_url=server.endpoint, region_name="us-east-1",
                           aws_access_key_id=key["access_key_id"], aws_secret_access_key=key["secret_access_key"],
                           config=Config(retries={"total_max_attempts": 1}))
    limited.create_bucket(Bucket=tenant)
    admin_call(server, "PUT", f"/api/v1/tenants/{tenant}/qos", {"requests_per_second": 1, "request_burst": 1})

    def throttled() -> bool:
        try:
            for _ in range(5):
                limited.head_bucket(Bucket=tenant)
        except ClientError as exc:
            return exc.response["ResponseMetadata"]["HTTPStatusCode"] == 503
        return False

    wait_until(throttled, 10, "a request of the limited tenant to be throttled", interval=0.3)
    # Counters move to the shared files within a second; the drain runs in the background.
    wait_until(lambda: (metric(text := metrics_text(server), "atoll_tenant_throttled_requests_total", tenant=tenant)
                        and metric(text, "atoll_drained_objects_total", op="put")
                        and metric(text, "atoll_writethrough_degraded_writes_total", bucket=degraded)) and text,
               15, "the throttled, drained and degraded counters")
    return metrics_text(server)


# --- tests -----------------------------------------------------------------------------------------------------------

def test_every_family_in_metrics_is_documented_and_every_documented_metric_exists(scrape):
    families = exposed(scrape)
    docs = documented()
    assert len(docs) >= 50, "docs/metrics.md's table did not parse"
    undocumented = sorted(set(families) - set(docs))
    missing = sorted(set(docs) - set(families))
    assert not undocumented, f"in /metrics, not in docs/metrics.md: {undocumented}"
    assert not missing, f"in docs/metrics.md, not in /metrics: {missing}"
    for name, row in docs.items():
        family = families[name]
        assert family["samples"], f"{name} has no sample: the traffic did not reach it"
        assert row["type"] == family["type"], (name, row["type"], family["type"])
        assert row["labels"] == family["labels"], (name, row["labels"], family["labels"])


def test_metric_names_follow_the_conventions(scrape):
    for name, family in exposed(scrape).items():
        assert re.fullmatch(r"atoll_[a-z0-9_]+", name), name
        assert name.endswith("_total") == (family["type"] == "counter"), name
        if family["type"] == "gauge" and name.endswith("_info"):
            assert all(sample.value == 1 for sample in family["samples"]), name
        # A label never names an object or a request (unbounded); the bounded ones are listed in the docs.
        assert not family["labels"] & {"key", "request_id", "object", "version_id", "upload_id"}, name
        assert family["labels"] <= {"bucket", "tenant", "endpoint", "store", "traffic", "direction", "outcome",
                                    "op", "state", "kind", "mode", "version"}, (name, family["labels"])


def test_every_metric_of_the_grafana_dashboard_exists(scrape):
    families = exposed(scrape)
    dashboard = json.loads(GRAFANA.read_text())
    used: set[str] = set()
    for panel in grafana_panels(dashboard):
        names = set()
        for target in panel["targets"]:
            names |= metric_names(target["expr"])
        assert names, f"panel {panel['title']!r} queries no Atoll metric"
        unknown = sorted(name for name in names if not resolves(name, families))
        assert not unknown, f"panel {panel['title']!r} uses metrics /metrics does not have: {unknown}"
        used |= names
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            names = metric_names(variable["definition"])
            assert names and all(resolves(name, families) for name in names), variable
    # The histogram suffixes resolve to histograms only: a counter's _count is not a metric.
    assert not resolves("atoll_tier_hits_total_count", families)
    assert resolves("atoll_fill_block_seconds_bucket", families)
    assert len(used) >= 40


def test_grafana_dashboard_is_well_formed_and_matches_the_docs():
    dashboard = json.loads(GRAFANA.read_text())
    assert 36 <= dashboard["schemaVersion"] <= 41
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    panels = grafana_panels(dashboard)
    ids = [panel["id"] for panel in dashboard["panels"]] + [p["id"] for p in panels if p not in dashboard["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    titles = {panel["title"] for panel in panels}
    assert len(titles) == len(panels), "panel titles must be unique (docs/metrics.md names them)"
    for panel in panels:
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert all(target["datasource"]["uid"] == "${datasource}" for target in panel["targets"]), panel["title"]
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
    sections = {panel["title"] for panel in dashboard["panels"] if panel["type"] == "row"}
    assert sections == {"Cold stores", "Bandwidth", "Drain and recovery point", "Warm tier", "Staging", "Tenants",
                        "Nodes and store"}
    # Every panel the docs name exists, and every panel is named by the docs for the metrics it shows.
    named = set().union(*(row["panels"] for row in documented().values()))
    assert named - titles == set(), f"docs/metrics.md names panels the dashboard lacks: {sorted(named - titles)}"
    assert titles - named == set(), f"panels docs/metrics.md does not mention: {sorted(titles - named)}"
