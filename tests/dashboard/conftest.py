"""Fixtures of the dashboard's browser tests (helpers in dashutil.py).

One server and one browser per module (a Chromium start costs about a second, an Atoll with a linked bucket
several): ``dash_site`` is an Atoll whose bucket is linked write-back to a fresh bucket on the session's moto S3
server through a FaultProxy, holding a little data (drained, read, some of it only in the cold store) and then
left quiet, so that the numbers a page shows stay put while a test compares them with the admin API. Each test
gets fresh browser contexts (``open_page``), signed in as the server's root operator or not; every page records
console errors, page errors and failed requests (the test fails on any) and saves a full-page screenshot of each
page it visits (and of the pages of a failed test as they were left) to ``$ATOLL_TEST_ARTIFACTS/dashboard``
(default ``<repo>/test-artifacts/dashboard``).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

import pytest

from coldside import Cold, ColdSite
from dashutil import (VIEWPORT, DashboardPage, artifacts_dir, launch_browser, link, sign_in, start_server,
                      wait_drained)
from harness import AtollProcess, stop_cleanly

KiB = 1 << 10


@dataclass
class DashSite:
    server: AtollProcess
    cold: Cold
    bucket: str
    warm_keys: list[str]  # written through Atoll, drained: resident and clean (what pins act on)
    stage_keys: list[str]  # only in the cold store: what a staging job fetches
    slow_keys: list[str]  # only in the cold store, bigger: a staging job slow enough to cancel under a bandwidth cap


@pytest.fixture(scope="module")
def dash_site(workdir, moto_s3):
    site = ColdSite("s3", moto_s3, "dash")
    server = None
    try:
        cold = site.cold("data")
        server = start_server(workdir)
        bucket = link(server, cold)
        s3 = server.client()
        warm_keys = [f"warm/w{i}.bin" for i in range(6)]
        for i, key in enumerate(warm_keys):
            s3.put_object(Bucket=bucket, Key=key, Body=os.urandom(48 * KiB + i))
        stage_keys = [f"stage/s{i}.bin" for i in range(4)]
        slow_keys = [f"slow/s{i}.bin" for i in range(8)]
        for key in stage_keys + slow_keys + ["read/r0.bin", "read/r1.bin"]:
            cold.put(key, os.urandom((256 if key.startswith("slow/") else 32) * KiB))
        for key in ["read/r0.bin", "read/r1.bin", "read/r0.bin", warm_keys[0]]:  # misses, then hits
            s3.get_object(Bucket=bucket, Key=key)["Body"].read()
        wait_drained(server)
        yield DashSite(server, cold, bucket, warm_keys, stage_keys, slow_keys)
        stop_cleanly(server)
    finally:
        if server is not None:
            server.kill()
        site.close()


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    playwright = sync_playwright().start()
    try:
        try:
            chromium = launch_browser(playwright)
        except RuntimeError as exc:
            pytest.fail(str(exc), pytrace=False)
        yield chromium
        chromium.close()
    finally:
        playwright.stop()


@pytest.fixture(scope="module")
def operator_session(browser, dash_site):
    """The cookies of a session signed in through the login form as the server's root operator."""
    context = browser.new_context(viewport=VIEWPORT)
    context.set_default_timeout(10_000)
    try:
        page = context.new_page()
        sign_in(page, dash_site.server)
        assert page.url.rstrip("/") == dash_site.server.admin_endpoint, page.url
        yield context.storage_state()
    finally:
        context.close()


def unreported_problems(pages: list[DashboardPage]) -> list[str]:
    """What went wrong in ``pages`` and no ``check`` has raised yet; marks it raised."""
    problems = []
    for dash in pages:
        problems += [f"{dash.label}: {problem}" for problem in dash.watch.problems[dash.watch.reported:]]
        dash.watch.reported = len(dash.watch.problems)
    return problems


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    """A test whose pages saw a console error, a page error or a failed request fails (not only errs at
    teardown), whatever it asserted itself."""
    result = yield
    problems = unreported_problems(getattr(item, "dashboard_pages", []))
    if problems:
        pytest.fail("the pages went wrong:\n" + "\n".join(problems), pytrace=False)
    return result


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    if report.when == "call" and report.failed:
        item.dashboard_failed = True  # open_page's teardown photographs the pages as the failure left them
    return report


@pytest.fixture
def open_page(browser, dash_site, operator_session, request):
    """``open_page(signed_in=True) -> DashboardPage`` in a context of its own. Any console error, page error or
    failed request a page sees fails the test; a failed test's pages get a last screenshot."""
    opened: list[tuple[object, DashboardPage]] = []
    request.node.dashboard_pages = []
    shots = artifacts_dir("dashboard")

    def make(signed_in: bool = True) -> DashboardPage:
        context = browser.new_context(viewport=VIEWPORT, storage_state=operator_session if signed_in else None)
        context.set_default_timeout(10_000)  # Playwright's 30 s would make a missing element cost half a minute
        label = re.sub(r"[^A-Za-z0-9_.-]+", "-", request.node.name).strip("-")  # test[/jobs] -> test-jobs
        label = label if not opened else f"{label}-{len(opened) + 1}"
        dash = DashboardPage(context.new_page(), dash_site.server, shots, label)
        opened.append((context, dash))
        request.node.dashboard_pages.append(dash)
        return dash

    yield make
    problems = []
    for context, dash in opened:
        if getattr(request.node, "dashboard_failed", False):
            try:
                dash.snap("at-failure")
            except Exception as exc:  # noqa: BLE001 - a page that cannot be photographed is reported, not fatal
                problems.append(f"{dash.label}: no screenshot at the failure: {exc}")
    problems += unreported_problems([dash for _, dash in opened])  # before closing aborts the polls in flight
    for context, _ in opened:
        context.close()
    if problems:
        pytest.fail("the pages went wrong:\n" + "\n".join(problems), pytrace=False)


@pytest.fixture
def dash(open_page) -> DashboardPage:
    """A page signed in as the root operator."""
    return open_page()
