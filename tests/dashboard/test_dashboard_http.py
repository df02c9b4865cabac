"""The dashboard over plain HTTP (``requests``) against a real ``atoll serve``: sign-in and its cookie, redirects,
CSRF refusals, static assets and their cache headers, the data API and the sampler's history (a partition, the
journaled writes, a throttled tenant), the pages' security headers, and that no secret reaches a page.

The module's server has a bucket linked write-back to a bucket of the session's moto S3 server through a FaultProxy
that refuses connections (a WAN partition): writes are journaled, the breaker opens, and the banner turns red.
A second, private server (short sessions) takes the tests that expire sessions and lock out an address.
"""

from __future__ import annotations

import html.parser
import json
import os
import re
import secrets
import time
from urllib.parse import unquote

import boto3
import pytest
import requests
from botocore.config import Config
from botocore.exceptions import ClientError

from coldstores import FaultProxy, fresh_name
from harness import AtollProcess, admin_call, admin_request, stop_cleanly, wait_until

pytestmark = pytest.mark.timeout(120)

PAGES = ["/", "/buckets", "/jobs", "/tenants", "/nodes", "/audit"]
SAMPLE_INTERVAL = 0.5
SESSION_TTL = 3600
SERVER_ENV = {"ATOLL_COLD_FIRST_BYTE_TIMEOUT": "1", "ATOLL_COLD_CONNECT_TIMEOUT": "1",
              "ATOLL_BREAKER_COOLDOWN": "0.5", "ATOLL_BREAKER_MAX_COOLDOWN": "2",
              "ATOLL_DASHBOARD_SAMPLE_INTERVAL": str(SAMPLE_INTERVAL),
              "ATOLL_DASHBOARD_SESSION_TTL": str(SESSION_TTL)}
COLD_SECRET = "cold-secret-" + secrets.token_hex(8)  # moto accepts any secret: one no page may ever show


class Site:
    def __init__(self, server: AtollProcess, bucket: str, waiting: int) -> None:
        self.server = server
        self.bucket = bucket
        self.waiting = waiting

    @property
    def base(self) -> str:
        return self.server.admin_endpoint


@pytest.fixture(scope="module")
def site(workdir, moto_s3):
    moto = moto_s3
    proxy = FaultProxy(("127.0.0.1", moto.port))
    server = AtollProcess(data_dir=os.path.join(workdir, f"dash-http-{secrets.token_hex(4)}"), extra_env=SERVER_ENV)
    try:
        server.start()
        cold = moto.create_bucket(fresh_name("dash-http-cold"))
        bucket = fresh_name("dash-http")
        server.client().create_bucket(Bucket=bucket)
        admin_call(server, "PUT", f"/api/v1/buckets/{bucket}/link",
                   {"url": f"s3://{cold}/warm", "mode": "writeback",
                    "options": {"endpoint": proxy.endpoint(), "access_key_id": moto.access_key,
                                "secret_access_key": COLD_SECRET, "region": moto.region}})
        proxy.refuse()  # the partition: the drain's uploads fail, the breaker opens, writes wait
        s3 = server.client()
        for n in range(5):
            s3.put_object(Bucket=bucket, Key=f"ckpt/{n}.bin", Body=os.urandom(20_000 + n))
        wait_until(lambda: admin_call(server, "GET", "/api/v1/status")["cold_endpoints"][0]["state"]
                   == "partitioned", 30, "the breaker to open")
        # The charts' samples are taken every SAMPLE_INTERVAL: the newest one may predate the breaker opening.
        opened = time.time()
        wait_until(lambda: any(sample["time"] > opened for sample in
                               admin_call(server, "GET", "/api/v1/dashboard/history")["samples"]),
                   10, "a history sample taken during the partition")
        yield Site(server, bucket, 5)
        stop_cleanly(server)
    finally:
        server.kill()
        proxy.close()


@pytest.fixture(scope="module")
def short_lived(workdir):
    """A private server whose sessions last 2 s (and whose failed-sign-in counts no other test shares)."""
    server = AtollProcess(data_dir=os.path.join(workdir, f"dash-short-{secrets.token_hex(4)}"),
                          extra_env={"ATOLL_DASHBOARD_SESSION_TTL": "2"})
    server.start()
    yield server
    stop_cleanly(server)


def sign_in(server: AtollProcess, **form: str) -> requests.Session:
    """A browser-like session signed in through the form (as the root operator unless ``form`` says else)."""
    session = requests.Session()
    answer = session.post(server.admin_endpoint + "/login",
                          data=form or {"access_key": server.access_key, "secret_key": server.secret_key},
                          allow_redirects=False)
    assert answer.status_code == 303 and answer.headers["location"] == "/", (answer.status_code, answer.text[:500])
    assert session.cookies.get("atoll_session")
    return session


def csrf_of(page: str) -> str:
    match = re.search(r'<meta name="atoll-csrf" content="([^"]+)">', page)
    assert match, page[:2000]
    return match.group(1)


class Elements(html.parser.HTMLParser):
    """Every start tag with its attributes, and the text of the JSON script blocks by id."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.json_blocks: dict[str, str] = {}
        self._block: str | None = None

    def handle_starttag(self, tag, attrs):
        attributes = dict(attrs)
        self.tags.append((tag, attributes))
        if tag == "script" and attributes.get("type") == "application/json":
            self._block = attributes.get("id") or ""
            self.json_blocks[self._block] = ""

    def handle_data(self, data):
        if self._block is not None:
            self.json_blocks[self._block] += data

    def handle_endtag(self, tag):
        if tag == "script":
            self._block = None


def parse(page: str) -> Elements:
    parser = Elements()
    parser.feed(page)
    return parser


def lookup(document, path: str):
    value = document
    for piece in path.split("."):
        key = unquote(piece)
        if isinstance(value, list):
            value = value[int(key)]
        else:
            assert isinstance(value, dict) and key in value, (path, key)
            value = value[key]
    return value


# --- sign-in ------------------------------------------------------------------------------------------------------

def test_pages_send_a_browser_without_a_session_to_the_sign_in_page(site):
    for path in PAGES:
        answer = requests.get(site.base + path, allow_redirects=False)
        assert answer.status_code == 303 and answer.headers["location"] == "/login", path
    forged = requests.get(site.base + "/", cookies={"atoll_session": "v1.e30.AAAA"}, allow_redirects=False)
    assert forged.status_code == 303
    # The API and /metrics keep answering JSON 401 to anyone without credentials.
    for path in ("/api/v1/dashboard", "/api/v1/dashboard/history", "/metrics", "/api/v1/status"):
        answer = requests.get(site.base + path, cookies={"atoll_session": "v1.e30.AAAA"})
        assert answer.status_code == 401 and answer.json()["error"]["code"] == "Unauthorized", path


def test_the_sign_in_page_has_the_form_and_the_security_headers(site):
    answer = requests.get(site.base + "/login")
    assert answer.status_code == 200 and answer.headers["content-type"] == "text/html; charset=utf-8"
    names = {attributes.get("name") for tag, attributes in parse(answer.text).tags if tag == "input"}
    assert {"access_key", "secret_key", "token"} <= names
    assert answer.headers["content-security-policy"].startswith("default-src 'self'")
    assert answer.headers["x-frame-options"] == "DENY"
    assert "login-error" not in answer.text


def test_wrong_credentials_get_the_same_401_whatever_was_wrong(site):
    server = site.server
    tenant = fresh_name("other")[:30].rstrip("-")
    admin_call(server, "POST", "/api/v1/tenants", {"name": tenant})
    outsider = admin_call(server, "POST", f"/api/v1/tenants/{tenant}/keys", {"name": "loader", "role": "admin"})
    wrong_secret = "wrong-" + secrets.token_hex(8)
    attempts = [{"access_key": server.access_key, "secret_key": wrong_secret},
                {"access_key": "AKNOSUCHKEY", "secret_key": wrong_secret},
                {"access_key": outsider["access_key_id"], "secret_key": outsider["secret_access_key"]},
                {"token": "not-the-token-" + secrets.token_hex(4)}, {}]
    messages = set()
    for form in attempts:
        answer = requests.post(site.base + "/login", data=form, allow_redirects=False)
        assert answer.status_code == 401, (form.keys(), answer.status_code)
        assert "set-cookie" not in answer.headers
        match = re.search(r'<p class="login-error"[^>]*>([^<]+)</p>', answer.text)
        assert match, answer.text[:1000]
        messages.add(match.group(1))
        for value in form.values():
            assert value not in answer.text
    assert len(messages) == 1, messages  # no hint which field was wrong
    log = server.log_text()
    assert "dashboard sign-in with an operator key failed" in log
    assert "dashboard sign-in with an admin token failed" in log
    assert wrong_secret not in log and outsider["secret_access_key"] not in log
    # A tenant's admin is no operator even with the right secret; the root operator still gets in.
    sign_in(server)


def test_signing_in_sets_a_strict_http_only_session_cookie(site):
    answer = requests.post(site.base + "/login", allow_redirects=False,
                           data={"access_key": site.server.access_key, "secret_key": site.server.secret_key})
    assert answer.status_code == 303 and answer.headers["location"] == "/"
    cookie = answer.headers["set-cookie"]
    name_value, *attributes = [part.strip() for part in cookie.split(";")]
    assert name_value.startswith("atoll_session=v1.")
    assert set(attributes) == {f"Max-Age={SESSION_TTL}", "Path=/", "HttpOnly", "SameSite=Strict"}
    session = requests.Session()
    session.cookies.set("atoll_session", name_value.partition("=")[2])
    page = session.get(site.base + "/")
    assert page.status_code == 200 and site.server.access_key in page.text
    assert csrf_of(page.text)


def test_the_admin_token_signs_in_too(site):
    session = sign_in(site.server, token=site.server.admin_token)
    page = session.get(site.base + "/jobs")
    assert page.status_code == 200 and "admin-token" in page.text


def test_a_sign_in_posted_from_another_site_is_refused(site):
    answer = requests.post(site.base + "/login", allow_redirects=False, headers={"Origin": "http://evil.example"},
                           data={"access_key": site.server.access_key, "secret_key": site.server.secret_key})
    assert answer.status_code == 403 and "set-cookie" not in answer.headers
    same = requests.post(site.base + "/login", allow_redirects=False, headers={"Origin": site.base},
                         data={"access_key": site.server.access_key, "secret_key": site.server.secret_key})
    assert same.status_code == 303


def test_signing_out_clears_the_cookie_and_needs_the_csrf_value(site):
    session = sign_in(site.server)
    csrf = csrf_of(session.get(site.base + "/").text)
    refused = session.post(site.base + "/logout", data={"csrf": "nope"}, allow_redirects=False)
    assert refused.status_code == 403
    answer = session.post(site.base + "/logout", data={"csrf": csrf}, allow_redirects=False)
    assert answer.status_code == 303 and answer.headers["location"] == "/login"
    assert "Max-Age=0" in answer.headers["set-cookie"]
    assert session.get(site.base + "/", allow_redirects=False).status_code == 303


def test_a_session_ends_when_it_expires(short_lived):
    session = sign_in(short_lived)
    assert session.get(short_lived.admin_endpoint + "/nodes", allow_redirects=False).status_code == 200
    time.sleep(2.2)
    assert session.get(short_lived.admin_endpoint + "/nodes", allow_redirects=False).status_code == 303
    assert session.get(short_lived.admin_endpoint + "/api/v1/dashboard").status_code == 401


def test_repeated_failed_sign_ins_are_held_back(short_lived):
    base = short_lived.admin_endpoint
    for _ in range(10):
        assert requests.post(base + "/login", data={"token": "wrong-token-value"}).status_code == 401
    held = requests.post(base + "/login", data={"access_key": short_lived.access_key,
                                                "secret_key": short_lived.secret_key}, allow_redirects=False)
    assert held.status_code == 429 and int(held.headers["retry-after"]) > 0
    assert "set-cookie" not in held.headers and "login-error" in held.text
    assert "too many failed attempts" in short_lived.log_text()


# --- CSRF ---------------------------------------------------------------------------------------------------------

def test_cookie_requests_that_change_something_need_the_csrf_header(site):
    session = sign_in(site.server)
    csrf = csrf_of(session.get(site.base + "/").text)
    assert session.get(site.base + "/api/v1/dashboard").status_code == 200  # reads need no header
    for headers in ({}, {"X-Atoll-CSRF": "forged"}, {"X-Atoll-CSRF": csrf_of(
            sign_in(site.server).get(site.base + "/").text)}):  # another session's value
        answer = session.post(site.base + "/api/v1/drain/pause", headers=headers)
        assert answer.status_code == 403 and answer.json()["error"]["code"] == "CSRFCheckFailed", headers
        answer = session.delete(site.base + "/api/v1/jobs/nosuchjob", headers=headers)
        assert answer.status_code == 403, headers
    assert admin_call(site.server, "GET", "/api/v1/status")["drain"]["paused"] is False
    paused = session.post(site.base + "/api/v1/drain/pause", headers={"X-Atoll-CSRF": csrf})
    assert paused.status_code == 200 and paused.json()["paused"] is True
    resumed = session.post(site.base + "/api/v1/drain/resume", headers={"X-Atoll-CSRF": csrf})
    assert resumed.status_code == 200 and resumed.json()["paused"] is False
    # The bearer token needs no CSRF value; a wrong bearer token is not rescued by a cookie.
    assert admin_request(site.server, "GET", "/api/v1/dashboard").status == 200
    wrong = session.get(site.base + "/api/v1/dashboard", headers={"Authorization": "Bearer wrong-token-123456"})
    assert wrong.status_code == 401


# --- static assets and page headers -------------------------------------------------------------------------------

def test_static_assets_are_served_without_a_session_with_long_cache_headers(site):
    session = sign_in(site.server)
    elements = parse(session.get(site.base + "/").text)
    urls = [a.get("src") or a.get("href") for tag, a in elements.tags if tag in ("script", "link") and
            (a.get("src") or a.get("href"))]
    assert len(urls) == 5, urls  # icon, two style sheets, two scripts
    types = {"js": "text/javascript", "css": "text/css", "svg": "image/svg+xml"}
    for url in urls:
        assert re.fullmatch(r"/static/[0-9a-f]{12}/[\w./-]+", url), url
        answer = requests.get(site.base + url)  # no cookie
        assert answer.status_code == 200, url
        assert answer.headers["cache-control"] == "public, max-age=31536000, immutable", url
        assert answer.headers["content-type"].startswith(types[url.rsplit(".", 1)[1]]), url
        assert answer.headers["x-content-type-options"] == "nosniff"
    uplot = requests.get(site.base + next(u for u in urls if u.endswith("uPlot.iife.min.js")))
    assert uplot.text.startswith("/*! https://github.com/leeoniya/uPlot (v1.6.32) */")
    license_url = next(u for u in urls if u.endswith("uPlot.iife.min.js")).replace("uPlot.iife.min.js", "LICENSE")
    assert "MIT" in requests.get(site.base + license_url).text
    stale = requests.get(site.base + "/static/000000000000/dashboard.js")
    assert stale.status_code == 200 and stale.headers["cache-control"] == "no-cache"
    for missing in ("/static/000000000000/nope.js", "/static/", "/static/x/%2E%2E/%2E%2E/app.py"):
        assert requests.get(site.base + missing).status_code == 404, missing
    head = requests.head(site.base + urls[0])
    assert head.status_code == 200 and head.content == b"" and int(head.headers["content-length"]) > 0
    assert requests.get(site.base + "/favicon.ico").headers["content-type"] == "image/svg+xml"


def test_pages_load_nothing_from_elsewhere_and_run_no_inline_script(site):
    session = sign_in(site.server)
    for path in PAGES:
        answer = session.get(site.base + path)
        assert answer.status_code == 200, path
        assert answer.headers["content-security-policy"].startswith("default-src 'self';"), path
        assert answer.headers["x-frame-options"] == "DENY" and answer.headers["cache-control"] == "no-store"
        for tag, attributes in parse(answer.text).tags:
            assert "style" not in attributes, (path, tag)  # CSP would refuse inline styles
            assert not any(name.startswith("on") for name in attributes), (path, tag, attributes)
            for name in ("src", "href", "action"):
                if attributes.get(name):
                    assert attributes[name].startswith("/"), (path, tag, attributes)
            if tag == "script":
                assert attributes.get("src") or attributes.get("type") == "application/json", (path, attributes)
        for href in ("/", "/buckets", "/jobs", "/tenants", "/nodes", "/audit"):
            assert f'<a href="{href}"' in answer.text, (path, href)


def test_pages_reject_other_methods(site):
    session = sign_in(site.server)
    assert session.post(site.base + "/buckets", headers={"X-Atoll-CSRF": "x"}).status_code == 405
    assert session.get(site.base + "/logout", allow_redirects=False).status_code == 405


# --- the data ----------------------------------------------------------------------------------------------------

def test_the_dashboard_document_shows_the_partition_and_the_journaled_writes(site):
    document = admin_call(site.server, "GET", "/api/v1/dashboard")
    status = admin_call(site.server, "GET", "/api/v1/status")
    assert {"time", "version", "node", "banner", "warm", "drain", "reads", "cold", "buckets", "jobs", "tenants",
            "nodes", "audit", "sampling"} <= set(document)
    bucket = document["buckets"][site.bucket]
    assert bucket["backlog"]["objects"] == site.waiting == status["drain"]["backlog"]["objects"]
    assert bucket["backlog"]["bytes"] == sum(20_000 + n for n in range(5)) == bucket["dirty_bytes"]
    assert bucket["recovery_point_seconds"] > 0 and bucket["mode"] == "writeback"
    assert bucket["endpoint_state"] == "partitioned"
    [(key, endpoint)] = document["cold"].items()
    assert key == status["cold_endpoints"][0]["endpoint"]
    assert endpoint["state"] == "partitioned" and endpoint["partitioned_since"] <= document["time"]
    assert set(endpoint["traffic"]) == {"demand", "stage", "drain"}
    assert document["banner"]["level"] == "critical"
    assert re.fullmatch(r"WAN partitioned since \d\d:\d\d — writes are journaled, 5 writes / 97\.7 KiB waiting",
                        document["banner"]["text"]), document["banner"]["text"]
    assert document["warm"]["dirty_bytes"] == bucket["backlog"]["bytes"]
    root = document["tenants"]["root"]
    assert {"warm_bytes", "warm_pinned_bytes", "warm_dirty_bytes", "throttled", "rates", "wan"} <= set(root)
    assert root["warm_dirty_bytes"] == bucket["dirty_bytes"]
    assert root["rates"]["throttled_per_second"] == 0.0
    [(name, node)] = document["nodes"].items()
    assert name == document["node"] and node["state"] == "alive"
    assert document["sampling"]["interval"] == SAMPLE_INTERVAL


def test_the_history_grows_by_a_sample_per_interval(site):
    first = admin_call(site.server, "GET", "/api/v1/dashboard/history")
    assert first["interval"] == SAMPLE_INTERVAL and first["samples"]
    times = [sample["time"] for sample in first["samples"]]
    assert times == sorted(times) and len(set(times)) == len(times)
    sample = first["samples"][-1]
    assert set(sample) == {"time", "warm", "traffic", "cold", "buckets", "tenants"}
    assert set(sample["warm"]) == {"resident", "pinned", "dirty"}
    assert set(sample["traffic"]) == {f"{kind}_{way}" for kind in ("demand", "stage", "drain")
                                      for way in ("in", "out")}
    [endpoint] = sample["cold"].values()
    assert endpoint["state"] == 2
    assert sample["buckets"][site.bucket]["backlog_objects"] == site.waiting
    assert "root" in sample["tenants"] and set(sample["tenants"]["root"]) == {"requests", "throttled", "bytes_in",
                                                                              "bytes_out"}
    newest = times[-1]
    time.sleep(3 * SAMPLE_INTERVAL)
    later = admin_call(site.server, "GET", f"/api/v1/dashboard/history?since={newest}")["samples"]
    assert len(later) >= 2 and all(s["time"] > newest for s in later)
    assert admin_call(site.server, "GET", "/api/v1/dashboard/history?since=1e12")["samples"] == []
    for query in ("since=yesterday", "since=nan", "since=inf", "limit=5"):
        answer = admin_request(site.server, "GET", f"/api/v1/dashboard/history?{query}")
        assert answer.status == 400 and answer.json["error"]["code"] == "InvalidArgument", query


def test_every_number_on_a_page_is_the_value_at_its_data_field_path(site):
    session = sign_in(site.server)
    for path in PAGES:
        elements = parse(session.get(site.base + path).text)
        document = json.loads(elements.json_blocks["dashboard-data"])
        fields = [a for _, a in elements.tags if "data-field" in a]
        assert fields, path
        for attributes in fields:
            assert json.loads(attributes["data-value"]) == lookup(document, attributes["data-field"]), attributes
        last = [a for tag, a in elements.tags if a.get("id") == "last-update"]
        assert len(last) == 1 and float(last[0]["data-time"]) == document["time"]
        for tag, attributes in elements.tags:
            if "data-chart" in attributes:
                assert attributes["data-points"] == "0" and attributes["data-source"], attributes
    overview = parse(session.get(site.base + "/").text)
    fields = {a["data-field"] for _, a in overview.tags if "data-field" in a}
    bucket = site.bucket.replace(".", "%2E")
    assert {f"buckets.{bucket}.backlog.objects", f"buckets.{bucket}.recovery_point_seconds", "banner.text",
            "warm.resident_bytes", "warm.pinned_bytes", "warm.dirty_bytes", "reads.hit_ratio"} <= fields
    assert {a["data-chart"] for _, a in overview.tags if "data-chart" in a} >= {"cold-state", "cold-latency",
                                                                               "cold-bandwidth", "backlog", "warm"}
    banner = [a for _, a in overview.tags if a.get("id") == "banner"]
    assert banner[0]["data-level"] == "critical"


def test_actions_are_on_their_pages(site):
    session = sign_in(site.server)
    overview = session.get(site.base + "/").text
    assert 'data-action="drain-pause"' in overview and 'data-action="drain-resume"' in overview
    assert '<dialog id="confirm"' in overview and 'id="confirm-yes"' in overview and 'id="flash"' in overview
    assert 'form data-action="start-stage"' in session.get(site.base + "/jobs").text
    buckets = session.get(site.base + "/buckets").text
    assert 'form data-action="pin"' in buckets and 'form data-action="unpin"' in buckets


def test_no_secret_reaches_a_page_or_the_data_api(site):
    server = site.server
    secrets_of_the_island = [COLD_SECRET, server.secret_key, server.admin_token, server.account_key]
    for session in (sign_in(server), sign_in(server, token=server.admin_token)):
        texts = [session.get(site.base + path).text for path in PAGES]
        texts += [session.get(site.base + "/api/v1/dashboard").text,
                  session.get(site.base + "/api/v1/dashboard/history").text]
        for text in texts:
            for secret in secrets_of_the_island:
                assert secret not in text
    assert COLD_SECRET not in server.log_text()


def test_a_throttled_tenant_shows_in_the_document_and_in_the_history(site):
    server = site.server
    tenant = fresh_name("slow")[:30].rstrip("-")
    admin_call(server, "POST", "/api/v1/tenants", {"name": tenant})
    admin_call(server, "PUT", f"/api/v1/tenants/{tenant}/qos", {"requests_per_second": 2, "request_burst": 2})
    key = admin_call(server, "POST", f"/api/v1/tenants/{tenant}/keys", {"name": "hammer", "role": "admin"})
    s3 = boto3.client("s3", endpoint_url=server.endpoint, region_name="us-east-1",
                      aws_access_key_id=key["access_key_id"], aws_secret_access_key=key["secret_access_key"],
                      config=Config(retries={"total_max_attempts": 1}))
    bucket = fresh_name("slow")
    wait_until(lambda: _created(s3, bucket), 10, "the tenant's bucket (its QoS allows 2 requests/s)")
    started = time.time()
    throttled = 0
    for _ in range(30):
        try:
            s3.head_bucket(Bucket=bucket)
        except ClientError as exc:
            assert exc.response["ResponseMetadata"]["HTTPStatusCode"] == 503
            throttled += 1
    assert throttled >= 20

    def seen() -> bool:
        samples = admin_call(server, "GET", f"/api/v1/dashboard/history?since={started}")["samples"]
        return any(s["tenants"].get(tenant, {}).get("throttled", 0) > 0 for s in samples)

    wait_until(seen, 10, "a sample with the tenant's throttled requests per second")
    document = admin_call(server, "GET", "/api/v1/dashboard")
    assert document["tenants"][tenant]["throttled"] >= throttled
    assert document["tenants"][tenant]["rates"]["throttled_per_second"] > 0


def _created(s3, bucket: str) -> bool:
    try:
        s3.create_bucket(Bucket=bucket)
        return True
    except ClientError as exc:
        if exc.response["Error"]["Code"] == "BucketAlreadyOwnedByYou":
            return True
        assert exc.response["ResponseMetadata"]["HTTPStatusCode"] == 503, exc.response
        return False
