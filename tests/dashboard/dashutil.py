"""Helpers of the dashboard's browser tests and of scripts/dashboard-screenshot.py: an Atoll whose bucket is linked
(write-back) to a cold store through a FaultProxy, Debian's Chromium driven by Playwright, a signed-in page that
records every console error, page error and failed request and saves a full-page screenshot of each page it
visits, and the ``data-field`` paths of the DOM contract resolved in the ``/api/v1/dashboard`` document.

The browser is the system's ``/usr/bin/chromium`` (scripts/install-test-deps.sh installs it from Debian), never a
browser downloaded by ``playwright install``: the machines reach no download site.
"""

from __future__ import annotations

import json
import math
import os
import re
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from coldside import Cold
from coldstores import fresh_name
from harness import REPO, AtollProcess, admin_call, wait_until

CHROMIUM = "/usr/bin/chromium"
# --headless: no display; --no-sandbox: the tests run as root in CI, where Chromium's sandbox refuses to start;
# --disable-dev-shm-usage: /dev/shm of containers is small; --disable-background-networking: no update checks,
# no field trials (the machines reach no such site, and a failed attempt would only cost time).
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking"]
VIEWPORT = {"width": 1400, "height": 900}
PAGES = ["/", "/buckets", "/jobs", "/tenants", "/nodes", "/audit"]

# Short cold-store timeouts (as in tests/wan/wanutil.py), so that a partition shows within seconds, and a short
# sampling interval, so that charts grow within a test's patience.
SERVER_ENV = {"ATOLL_COLD_FIRST_BYTE_TIMEOUT": "1", "ATOLL_COLD_CONNECT_TIMEOUT": "1",
              "ATOLL_BREAKER_COOLDOWN": "0.5", "ATOLL_BREAKER_MAX_COOLDOWN": "2",
              "ATOLL_FILL_BLOCK_SIZE": str(64 << 10), "ATOLL_DASHBOARD_SAMPLE_INTERVAL": "0.5"}


def artifacts_dir(*parts: str) -> Path:
    """Where screenshots go: ``$ATOLL_TEST_ARTIFACTS`` or ``<repo>/test-artifacts`` (gitignored)."""
    base = Path(os.environ.get("ATOLL_TEST_ARTIFACTS") or REPO / "test-artifacts")
    path = base.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def launch_browser(playwright):
    """Debian's Chromium under Playwright; a clear failure (not a skip) when it is not installed."""
    if not os.access(CHROMIUM, os.X_OK):
        raise RuntimeError(f"{CHROMIUM} is missing: run `make test-deps` (or `bash scripts/install-test-deps.sh`)")
    return playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)


# --- the server and its cold store --------------------------------------------------------------------------------

def start_server(workdir: str, **env: str) -> AtollProcess:
    server = AtollProcess(data_dir=os.path.join(workdir, f"dash-{secrets.token_hex(4)}"),
                          extra_env={**SERVER_ENV, **env})
    return server.start()


def link(server: AtollProcess, cold: Cold, mode: str = "writeback", name: str = "") -> str:
    """A new bucket (``name``, or a fresh one) linked to ``cold`` through the admin API (the CLI would cost a
    Python start-up: seconds on a busy 2-core machine)."""
    name = name or fresh_name("dash")
    server.client().create_bucket(Bucket=name)
    options = dict(pair.split("=", 1) for pair in cold.link_options()[1::2])  # ["-o", "k=v", ...]
    admin_call(server, "PUT", f"/api/v1/buckets/{name}/link", {"url": cold.url, "mode": mode, "options": options})
    return name


def dashboard(server: AtollProcess) -> dict:
    return admin_call(server, "GET", "/api/v1/dashboard")


def backlog_objects(server: AtollProcess) -> int:
    return admin_call(server, "GET", "/api/v1/status")["drain"]["backlog"]["objects"]


def wait_drained(server: AtollProcess, timeout: float = 30) -> None:
    wait_until(lambda: backlog_objects(server) == 0, timeout, "the drain backlog to empty", interval=0.1)


# --- the DOM contract ---------------------------------------------------------------------------------------------

def resolve(doc: Any, path: str) -> Any:
    """The value at a ``data-field`` path in the dashboard document (atoll/admin/dashboard/paths.py): keys from
    the root joined by ``.``, each key with ``%`` and ``.`` written ``%25`` and ``%2E``, list items by index.
    Written here from that description rather than imported, so that a change of syntax shows as a failure.
    Raises KeyError if the document has nothing there."""
    value = doc
    for piece in path.split("."):
        key = unquote(piece)
        if isinstance(value, dict) and key in value:
            value = value[key]
        elif isinstance(value, list) and key.isdigit() and int(key) < len(value):
            value = value[int(key)]
        else:
            raise KeyError(path)
    return value


def field_path(*keys: Any) -> str:
    """The ``data-field`` path of ``keys`` (the inverse of ``resolve``'s reading)."""
    return ".".join(str(key).replace("%", "%25").replace(".", "%2E") for key in keys)


# Fields that move by themselves while nothing happens: ages and uptimes grow with the clock. Their page value
# may lag the document fetched after it by the time between the two fetches (plus a second of slack).
CLOCK_FIELD = re.compile(r"(^time|uptime_seconds|age_seconds|recovery_point_seconds)$")


def same_value(path: str, shown: Any, truth: Any, elapsed: float) -> bool:
    """Does the page's raw value equal the document's? Exact, except a clock field within ``elapsed`` + 1 s."""
    if shown == truth:
        return True
    if isinstance(shown, (int, float)) and isinstance(truth, (int, float)) and not isinstance(shown, bool):
        if CLOCK_FIELD.search(path):
            return abs(truth - shown) <= elapsed + 1.0
        return math.isclose(shown, truth, rel_tol=1e-9, abs_tol=1e-9)
    return False


FIELDS_JS = """() => {
    const last = document.querySelector('#last-update');
    return {
        time: last ? last.getAttribute('data-time') : null,
        fields: Array.from(document.querySelectorAll('[data-field]')).map(e => ({
            field: e.getAttribute('data-field'), value: e.getAttribute('data-value'),
            text: (e.textContent || '').trim().slice(0, 200)})),
    };
}"""


@dataclass
class ShownFields:
    time: float | None
    fields: list[dict]


def shown_fields(page) -> ShownFields:
    found = page.evaluate(FIELDS_JS)
    return ShownFields(float(found["time"]) if found["time"] not in (None, "") else None, found["fields"])


def field_mismatches(shown: ShownFields, doc: dict, elapsed: float) -> list[str]:
    """Each ``[data-field]`` whose raw value is not the document's at its path, described."""
    problems = []
    for item in shown.fields:
        path, raw = item["field"], item["value"]
        if raw is None:
            problems.append(f"{path}: no data-value attribute (text {item['text']!r})")
            continue
        try:
            value = json.loads(raw)
        except ValueError:
            problems.append(f"{path}: data-value {raw!r} is not JSON")
            continue
        try:
            truth = resolve(doc, path)
        except KeyError:
            problems.append(f"{path}: no such path in /api/v1/dashboard")
            continue
        if not same_value(path, value, truth, elapsed):
            problems.append(f"{path}: page {value!r}, API {truth!r}")
    return problems


# --- a watched, signed-in page ------------------------------------------------------------------------------------

@dataclass
class PageWatch:
    """Everything that went wrong in a page: console errors and warnings, uncaught exceptions, native dialogs
    (the contract asks for ``<dialog id=confirm>``), requests that failed and answers of 400 and above.

    A request aborted because the page navigated away (``net::ERR_ABORTED`` of a request issued before the
    main frame's latest navigation began, e.g. a live-update fetch in flight) is a browser's normal life, not a
    failure. ``allow(status, url_part)`` admits one expected error answer (the 401 page of a bad login)."""

    problems: list[str] = field(default_factory=list)
    allowed: list[tuple[int, str]] = field(default_factory=list)
    admitted: list[tuple[int, str]] = field(default_factory=list)  # (status, url) of allowed answers seen
    reported: int = 0  # problems already raised by ``DashboardPage.check``
    navigations: int = 0
    changes: list[str] = field(default_factory=list)  # "METHOD url" of every request other than GET or HEAD
    _issued: dict = field(default_factory=dict)

    def attach(self, page) -> None:
        page.on("console", self._console)
        page.on("pageerror", lambda exc: self.problems.append(f"page error: {exc}"))
        page.on("dialog", self._dialog)
        page.on("request", lambda request: self._request(page, request))
        page.on("requestfailed", self._failed)
        page.on("response", self._response)

    def allow(self, status: int, url_part: str) -> None:
        self.allowed.append((status, url_part))

    def _console(self, message) -> None:
        # Chromium logs every error answer as a console error too; an allowed one is no problem there either.
        loaded = re.match(r"Failed to load resource: the server responded with a status of (\d+)", message.text)
        if loaded and (int(loaded.group(1)), message.location.get("url")) in self.admitted:
            return
        if message.type in ("error", "warning"):
            self.problems.append(f"console {message.type}: {message.text} ({message.location})")

    def _dialog(self, dialog) -> None:
        self.problems.append(f"native {dialog.type} dialog: {dialog.message!r} (the contract has <dialog id=confirm>)")
        dialog.dismiss()

    def _request(self, page, request) -> None:
        if request.is_navigation_request() and request.frame == page.main_frame:
            self.navigations += 1
        self._issued[id(request)] = self.navigations
        if request.method not in ("GET", "HEAD"):
            self.changes.append(f"{request.method} {request.url}")

    def _failed(self, request) -> None:
        failure = request.failure or ""
        if "ERR_ABORTED" in failure and self._issued.get(id(request), self.navigations) < self.navigations:
            return
        self.problems.append(f"request failed: {request.method} {request.url}: {failure}")

    def _response(self, response) -> None:
        if response.status < 400:
            return
        for status, part in self.allowed:
            if response.status == status and part in response.url:
                self.allowed.remove((status, part))
                self.admitted.append((response.status, response.url))
                return
        self.problems.append(f"HTTP {response.status} for {response.request.method} {response.url}")


class DashboardPage:
    """A browser page on one server's admin port: ``visit`` a page (waits for its first live refresh and saves a
    full-page screenshot), ``snap`` the current state, ``check`` that nothing went wrong so far."""

    def __init__(self, page, server: AtollProcess, shots: Path, label: str) -> None:
        self.page = page
        self.server = server
        self.shots = shots
        self.label = label
        self.watch = PageWatch()
        self.watch.attach(page)
        self._shots_taken = 0

    def url(self, path: str) -> str:
        return self.server.admin_endpoint + path

    def visit(self, path: str, *, live: bool = True):
        """Open ``path``; with ``live``, wait until the page has shown data (``#last-update[data-time]``)."""
        response = self.page.goto(self.url(path), wait_until="load")
        if live:
            self.wait_refreshed(after=0)
        self.snap(path)
        return response

    def last_update(self) -> float:
        value = self.page.get_attribute("#last-update", "data-time", timeout=5000)
        return float(value) if value else 0.0

    def wait_refreshed(self, after: float, timeout: float = 10) -> float:
        """Wait until ``#last-update[data-time]`` is later than ``after``; that time."""
        self.page.wait_for_function(
            "after => { const e = document.querySelector('#last-update');"
            " return e && Number(e.getAttribute('data-time')) > after; }", arg=after, timeout=timeout * 1000)
        return self.last_update()

    def snap(self, name: str) -> Path:
        self._shots_taken += 1
        slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "overview"
        path = self.shots / f"{self.label}-{self._shots_taken:02d}-{slug}.png"
        self.page.screenshot(path=str(path), full_page=True)
        return path

    def check(self) -> None:
        self.watch.reported = len(self.watch.problems)
        assert not self.watch.problems, "the page went wrong:\n" + "\n".join(self.watch.problems)

    # the confirm dialog of every action ---------------------------------------------------------------------
    def confirm(self, answer: bool = True, timeout: float = 5) -> str:
        """Answer the open ``<dialog id=confirm>``; its ``#confirm-text``."""
        dialog = self.page.locator("dialog#confirm")
        dialog.wait_for(state="visible", timeout=timeout * 1000)
        assert dialog.evaluate("d => d.open"), "dialog#confirm is visible but not open"
        text = self.page.locator("#confirm-text").inner_text()
        self.page.click("#confirm-yes" if answer else "#confirm-no")
        dialog.wait_for(state="hidden", timeout=timeout * 1000)
        return text

    def flash(self, timeout: float = 10) -> tuple[str, str]:
        """(data-outcome, text) of ``#flash`` once it shows an outcome."""
        self.page.wait_for_function(
            "() => { const f = document.querySelector('#flash');"
            " return f && ['ok', 'error'].includes(f.getAttribute('data-outcome')); }", timeout=timeout * 1000)
        flash = self.page.locator("#flash")
        return flash.get_attribute("data-outcome"), flash.inner_text()


def sign_in(page, server: AtollProcess, access_key: str | None = None, secret_key: str | None = None) -> None:
    """Sign in through the login form with an operator's keys (the server's root identity by default)."""
    page.goto(server.admin_endpoint + "/login", wait_until="load")
    page.fill("input[name=access_key]", access_key or server.access_key)
    page.fill("input[name=secret_key]", secret_key or server.secret_key)
    with page.expect_navigation(wait_until="load"):
        page.press("input[name=secret_key]", "Enter")  # submits the form, whatever its button looks like
