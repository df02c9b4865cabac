"""The web dashboard in a real headless Chromium (Debian's, driven by Playwright): sign-in, every page clean and
showing the numbers the admin API has, live updates, the operator actions with their confirmation and audit
entries (and nothing done when the confirmation is cancelled), and a WAN partition showing as one. The DOM contract these tests hold the pages to is in
atoll/admin/dashboard (``data-field`` paths into ``/api/v1/dashboard``, ``data-action`` controls, the confirm
dialog, ``#flash``, ``#last-update``, ``[data-chart]``). Fixtures: conftest.py; helpers: dashutil.py.

Tests run in file order against one server (module fixtures), and each leaves it as it found it: quiet, drain
running, nothing pinned, the WAN link healthy. The partition comes last.

Page values against the API: a page's raw value (``data-value``) must equal the value at its path in
``/api/v1/dashboard`` fetched right after reading the page, exactly (the setup is quiet, so rates and counts stay
put), with one tolerance: clock fields (``time``, uptimes, ages, recovery points) may differ by the time between
the page's refresh and the API read, plus a second. A live refresh landing between the two reads is no failure:
the page is read again after its next refresh, up to four times.
"""

from __future__ import annotations

import json
import time
from urllib.parse import quote

import pytest

from dashutil import (PAGES, dashboard, field_mismatches, field_path, resolve, shown_fields, sign_in,
                      wait_drained)
from harness import admin_call, admin_request, admin_status, meta_query, wait_until

pytestmark = pytest.mark.timeout(120)


# --- the admin API's side of things -------------------------------------------------------------------------------

def audit_entries(server, limit: int = 50) -> list[dict]:
    return admin_call(server, "GET", f"/api/v1/audit?limit={limit}")["entries"]


def newest_audit_id(server):
    entries = audit_entries(server, 1)
    return entries[0]["id"] if entries else None


def audit_since(server, since_id) -> list[dict]:
    """Entries newer than ``since_id`` (None: all), oldest first."""
    newer = []
    for entry in audit_entries(server, 200):
        if since_id is not None and entry["id"] == since_id:
            break
        newer.append(entry)
    return newer[::-1]


def assert_audited(server, since_id, action: str, actor: str, target_part: str = "") -> dict:
    entries = audit_since(server, since_id)
    found = [e for e in entries if e["action"] == action]
    assert found, f"no {action} audit entry; new entries: {entries}"
    entry = found[-1]
    assert entry["actor"] == actor, entry
    assert entry["outcome"] == "ok", entry
    assert target_part in str(entry["target"]) + str(entry.get("detail")), entry
    assert entry.get("request_id"), entry
    return entry


def jobs(server) -> list[dict]:
    return admin_call(server, "GET", "/api/v1/jobs?limit=1000")["jobs"]


def pinned_bytes(server, bucket: str) -> int:
    return admin_call(server, "GET", f"/api/v1/buckets/{quote(bucket)}")["pinned_bytes"]


def pinned_keys(server, bucket: str) -> list[str]:
    return [row[0] for row in meta_query(server, "SELECT key FROM objects WHERE bucket = ? AND pinned_until > ? "
                                         "ORDER BY key", (bucket, time.time()))]


def drain_paused(server) -> bool:
    return admin_status(server)["drain"]["paused"]


# --- the page's side ----------------------------------------------------------------------------------------------

def fill(form, name: str, value: str) -> None:
    form.locator(f"input[name={name}]").fill(value)


def submit(form) -> None:
    form.locator("[type=submit], button:not([type])").first.click()


# Where each action lives (atoll/admin/dashboard/__init__.py, the DOM contract).
ACTION_PAGES = {"button[data-action=drain-pause]": "/", "button[data-action=drain-resume]": "/",
                "form[data-action=start-stage]": "/jobs", "button[data-action=cancel-job]": "/jobs",
                "form[data-action=pin]": "/buckets", "form[data-action=unpin]": "/buckets"}


def find_control(dash, selector: str) -> None:
    """Open the page of ``selector``'s action, unless it is the page shown; the control must be there."""
    path = ACTION_PAGES[selector]
    if dash.page.url != dash.url(path):
        dash.visit(path)
    assert dash.page.locator(selector).count() == 1, f"{path} has no {selector}"


def cancel_changes_nothing(dash, server, since_audit_id) -> None:
    """Answer the open confirm dialog with Cancel: the page sends no request that changes anything, shows no
    outcome, and the audit log has no new entry (the caller checks the state the action would have changed)."""
    sent = len(dash.watch.changes)
    dash.confirm(answer=False)
    dash.page.evaluate("() => new Promise(done => setTimeout(done, 200))")  # room for a request, if one went
    assert dash.watch.changes[sent:] == [], "cancelling the dialog sent a request"
    assert dash.page.get_attribute("#flash", "data-outcome") == "", "cancelling the dialog showed an outcome"
    assert audit_since(server, since_audit_id) == [], "cancelling the dialog left an audit entry"


def wait_field(dash, path: str, expected, timeout: float = 20) -> None:
    """Wait until the page's ``[data-field=path]`` carries ``expected`` as its raw value, without a reload."""
    deadline = time.monotonic() + timeout
    seen = None
    while time.monotonic() < deadline:
        element = dash.page.locator(f'[data-field="{path}"]')
        if element.count():
            seen = element.first.get_attribute("data-value")
            if seen is not None and json.loads(seen) == expected:
                return
        time.sleep(0.1)
    raise AssertionError(f"[data-field={path!r}] shows {seen!r}, not {expected!r}, after {timeout}s")


def fields_match_api(dash, tries: int = 4) -> int:
    """Every ``[data-field]`` of the current page equals the same path in ``/api/v1/dashboard`` fetched right
    after reading the page. A live refresh can land between the two reads, so a mismatch is read again after the
    page's next refresh; the last try's mismatches fail the test. The number of fields compared."""
    problems: list[str] = []
    for _ in range(tries):
        shown = shown_fields(dash.page)
        doc = dashboard(dash.server)
        elapsed = max(0.0, time.time() - shown.time) if shown.time else 0.0
        problems = field_mismatches(shown, doc, elapsed)
        if not problems:
            return len(shown.fields)
        dash.wait_refreshed(after=shown.time or 0)
    raise AssertionError(f"{len(problems)} page values differ from /api/v1/dashboard:\n" + "\n".join(problems[:40]))


# --- sign-in ------------------------------------------------------------------------------------------------------

def test_bad_credentials_show_an_error_and_good_ones_reach_the_overview(open_page, dash_site):
    server = dash_site.server
    dash = open_page(signed_in=False)
    dash.watch.allow(401, "/login")
    dash.visit("/login", live=False)
    dash.page.fill("input[name=access_key]", server.access_key)
    dash.page.fill("input[name=secret_key]", server.secret_key + "x")
    with dash.page.expect_navigation(wait_until="load") as navigation:
        dash.page.press("input[name=secret_key]", "Enter")
    assert navigation.value.status == 401
    dash.snap("login-refused")
    error = dash.page.locator(".login-error")
    assert error.is_visible(), dash.page.content()[:2000]
    message = error.inner_text()
    assert message.strip() and server.secret_key not in dash.page.content()
    assert not any(c["name"] == "atoll_session" for c in dash.page.context.cookies())

    sign_in(dash.page, server)
    assert dash.page.url.rstrip("/") == server.admin_endpoint, dash.page.url
    assert any(c["name"] == "atoll_session" and c["httpOnly"] for c in dash.page.context.cookies())
    dash.wait_refreshed(after=0)
    dash.snap("signed-in")
    dash.check()


def test_the_admin_token_signs_in_too(open_page, dash_site):
    dash = open_page(signed_in=False)
    dash.visit("/login", live=False)
    dash.page.fill("input[name=token]", dash_site.server.admin_token)
    with dash.page.expect_navigation(wait_until="load"):
        dash.page.press("input[name=token]", "Enter")
    assert dash.page.url.rstrip("/") == dash_site.server.admin_endpoint, dash.page.url
    dash.wait_refreshed(after=0)
    dash.check()


def test_a_page_without_a_session_sends_to_the_login(open_page, dash_site):
    dash = open_page(signed_in=False)
    for path in PAGES:
        response = dash.visit(path, live=False)
        assert dash.page.url == dash_site.server.admin_endpoint + "/login", (path, dash.page.url)
        assert response.status == 200 and response.request.redirected_from is not None, path
        assert response.request.redirected_from.response().status == 303, path
        assert dash.page.locator("input[name=access_key]").count() == 1, path
    # The API keeps answering JSON 401 without credentials.
    answer = admin_request(dash_site.server, "GET", "/api/v1/dashboard", token=None)
    assert answer.status == 401 and answer.json["error"]["code"], answer
    dash.check()


# --- every page ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("path", PAGES)
def test_page_loads_clean_and_its_numbers_are_the_apis(dash, path):
    dash.visit(path)
    compared = fields_match_api(dash)
    if path != "/audit":
        assert compared >= 3, f"{path} shows only {compared} live fields"
    for target in PAGES:  # every page reaches every other from its navigation
        assert dash.page.locator(f'nav a[href="{target}"]').count() == 1, (path, target)
    dash.check()


def test_the_overview_agrees_with_the_status_api(dash, dash_site):
    dash.visit("/")
    status = admin_status(dash_site.server)
    doc = dashboard(dash_site.server)
    shown = {item["field"]: item["value"] for item in shown_fields(dash.page).fields}
    warm = status["warm"]
    capacity_fields = [f for f in shown if f.endswith("capacity") and resolve(doc, f) == warm["capacity"]]
    resident_fields = [f for f in shown if f.endswith("resident_bytes")
                       and resolve(doc, f) == warm["resident_bytes"]]
    assert capacity_fields, f"the overview shows no warm capacity of {warm['capacity']}: {sorted(shown)}"
    assert resident_fields, f"the overview shows no resident bytes of {warm['resident_bytes']}: {sorted(shown)}"
    assert warm["resident_bytes"] > 0
    dash.check()


def test_the_jobs_page_lists_the_jobs_api(dash, dash_site):
    server = dash_site.server
    job = admin_call(server, "POST", "/api/v1/jobs", {"kind": "stage", "bucket": dash_site.bucket,
                                                      "prefix": "read/"})
    wait_until(lambda: admin_call(server, "GET", f"/api/v1/jobs/{job['id']}")["state"] == "done", 20,
               "the staging job to finish")
    dash.visit("/jobs")
    fields_match_api(dash)
    page_text = dash.page.inner_text("body")
    for listed in jobs(server)[:20]:
        assert listed["id"] in dash.page.content(), f"job {listed['id']} is not on /jobs"
    assert dash_site.bucket in page_text
    dash.check()


def test_the_audit_page_lists_the_audit_api(dash, dash_site):
    admin_call(dash_site.server, "POST", "/api/v1/drain/pause")
    admin_call(dash_site.server, "POST", "/api/v1/drain/resume")
    newest = newest_audit_id(dash_site.server)
    dash.visit("/audit")
    # The page may have been drawn from a document built a moment before the resume: its live update shows it.
    dash.page.wait_for_selector(f'tr[data-audit-id="{newest}"]', timeout=10_000)
    rows = dash.page.eval_on_selector_all("tr[data-audit-id]", "rows => rows.map(r => r.dataset.auditId)")
    entries = audit_entries(dash_site.server, len(rows))
    assert [str(e["id"]) for e in entries] == rows[:len(entries)], (rows, entries)
    assert "drain.resume" in dash.page.inner_text(f'tr[data-audit-id="{rows[0]}"]')
    dash.check()


# --- live updates -------------------------------------------------------------------------------------------------

def test_numbers_and_charts_update_without_a_reload(dash):
    dash.visit("/")
    dash.page.evaluate("() => { window.__notReloaded = true; }")
    charts = dash.page.locator("[data-chart]")
    assert charts.count() >= 1, "the overview has no chart"
    first = dash.last_update()
    points = [int(charts.nth(i).get_attribute("data-points") or 0) for i in range(charts.count())]
    later = dash.wait_refreshed(after=first, timeout=10)
    assert later > first
    dash.page.wait_for_function(
        "before => Array.from(document.querySelectorAll('[data-chart]'))"
        ".some((c, i) => Number(c.getAttribute('data-points')) > before[i])", arg=points, timeout=10_000)
    assert dash.page.evaluate("() => window.__notReloaded === true"), "the page reloaded"
    dash.snap("updated")
    dash.check()


# --- actions ------------------------------------------------------------------------------------------------------

def test_start_a_staging_job_from_the_form(dash, dash_site):
    server, bucket = dash_site.server, dash_site.bucket
    since = newest_audit_id(server)
    before = {job["id"] for job in jobs(server)}
    find_control(dash, "form[data-action=start-stage]")
    form = dash.page.locator("form[data-action=start-stage]")
    fill(form, "bucket", bucket)
    fill(form, "prefix", "stage/")
    submit(form)
    cancel_changes_nothing(dash, server, since)
    assert {job["id"] for job in jobs(server)} == before
    submit(form)
    text = dash.confirm()
    assert bucket in text and "stage/" in text, text
    outcome, message = dash.flash()
    assert outcome == "ok", message
    new = [job for job in jobs(server) if job["id"] not in before]
    assert len(new) == 1 and new[0]["kind"] == "stage" and new[0]["bucket"] == bucket, new
    assert new[0]["spec"]["prefix"] == "stage/", new
    job_id = new[0]["id"]
    # The new row appears and its progress reaches done without a reload.
    wait_field(dash, f"jobs.{job_id}.state", "done")
    wait_field(dash, f"jobs.{job_id}.progress.fraction", 1.0)
    dash.snap("job-done")
    residency = meta_query(server, "SELECT key, residency FROM objects WHERE bucket = ? AND key LIKE 'stage/%'",
                           (bucket,))
    assert sorted(residency) == [(key, 2) for key in sorted(dash_site.stage_keys)]
    assert_audited(server, since, "job.create", server.access_key, bucket)
    dash.check()


def test_cancel_a_job(dash, dash_site):
    server, bucket, proxy = dash_site.server, dash_site.bucket, dash_site.cold.proxy
    since = newest_audit_id(server)
    proxy.bandwidth = 64 << 10  # 2 MiB to stage: half a minute, long enough to cancel
    try:
        job = admin_call(server, "POST", "/api/v1/jobs", {"kind": "stage", "bucket": bucket, "prefix": "slow/"})
        dash.visit("/jobs")
        button = dash.page.locator(f'button[data-action=cancel-job][data-job-id="{job["id"]}"]')
        button.click()
        assert dash.confirm().strip()
        outcome, message = dash.flash()
        assert outcome == "ok", message
        assert admin_call(server, "GET", f"/api/v1/jobs/{job['id']}")["state"] == "cancelled"
        wait_field(dash, f"jobs.{job['id']}.state", "cancelled")
        dash.snap("cancelled")
    finally:
        proxy.bandwidth = None
    assert_audited(server, since, "job.cancel", server.access_key, job["id"])
    dash.check()


def test_pause_and_resume_the_drain(dash, dash_site):
    server = dash_site.server
    since = newest_audit_id(server)
    assert not drain_paused(server)
    find_control(dash, "button[data-action=drain-pause]")
    dash.page.click("button[data-action=drain-pause]")
    cancel_changes_nothing(dash, server, since)
    assert not drain_paused(server)
    dash.page.click("button[data-action=drain-pause]")
    dash.confirm()
    outcome, message = dash.flash()
    assert outcome == "ok", message
    assert drain_paused(server)
    wait_field(dash, "drain.paused", True)
    dash.snap("paused")
    # The same page resumes it, without a reload.
    dash.page.evaluate("() => document.querySelector('#flash').removeAttribute('data-outcome')")
    dash.page.click("button[data-action=drain-resume]")
    dash.confirm()
    outcome, message = dash.flash()
    assert outcome == "ok", message
    assert not drain_paused(server)
    wait_field(dash, "drain.paused", False)
    assert_audited(server, since, "drain.pause", server.access_key)
    assert_audited(server, since, "drain.resume", server.access_key)
    dash.check()


def test_pin_and_unpin_a_prefix(dash, dash_site):
    server, bucket = dash_site.server, dash_site.bucket
    since = newest_audit_id(server)
    assert pinned_keys(server, bucket) == []
    find_control(dash, "form[data-action=pin]")
    form = dash.page.locator("form[data-action=pin]")
    fill(form, "bucket", bucket)
    fill(form, "prefix", "warm/")
    submit(form)
    cancel_changes_nothing(dash, server, since)
    assert pinned_keys(server, bucket) == []
    submit(form)
    assert "warm/" in dash.confirm()
    outcome, message = dash.flash()
    assert outcome == "ok", message
    assert pinned_keys(server, bucket) == sorted(dash_site.warm_keys)
    assert pinned_bytes(server, bucket) > 0
    dash.snap("pinned")

    dash.page.evaluate("() => document.querySelector('#flash').removeAttribute('data-outcome')")
    form = dash.page.locator("form[data-action=unpin]")
    fill(form, "bucket", bucket)
    fill(form, "prefix", "warm/")
    submit(form)
    assert "warm/" in dash.confirm()
    outcome, message = dash.flash()
    assert outcome == "ok", message
    assert pinned_keys(server, bucket) == []
    assert pinned_bytes(server, bucket) == 0
    assert_audited(server, since, "pin.add", server.access_key, "warm/")
    assert_audited(server, since, "pin.remove", server.access_key, "warm/")
    dash.check()


# --- a WAN partition ----------------------------------------------------------------------------------------------

def test_a_wan_partition_shows_on_the_overview(dash, dash_site):
    server, bucket, proxy = dash_site.server, dash_site.bucket, dash_site.cold.proxy
    dash.visit("/")
    proxy.refuse()  # connections refused: the drain fails fast and the breaker opens within seconds
    try:
        s3 = server.client()
        for i in range(3):  # journaled; the drain's attempts find the link cut
            s3.put_object(Bucket=bucket, Key=f"partition/p{i}.bin", Body=b"x" * 4096)
        wait_until(lambda: any(v["bucket"] == bucket and v["state"] == "partitioned"
                               for v in admin_status(server)["cold_stores"]), 20, "the API to see the partition")
        # Without a reload: the banner turns critical and says so, the endpoint's state field says partitioned.
        dash.page.wait_for_selector("#banner[data-level=critical]", timeout=10_000)
        assert "partitioned" in dash.page.inner_text("#banner"), dash.page.inner_text("#banner")
        endpoint = dashboard(server)["buckets"][bucket]["endpoint"]
        wait_field(dash, field_path("cold", endpoint, "state"), "partitioned", timeout=10)
        assert "partitioned" in dash.page.inner_text(f'[data-field="{field_path("cold", endpoint, "state")}"]')
        dash.snap("partitioned")
    finally:
        proxy.heal()
    wait_drained(server, timeout=30)
    dash.page.wait_for_selector("#banner[data-level=ok]", timeout=10_000)  # and the banner clears by itself
    dash.snap("healed")
    dash.check()
