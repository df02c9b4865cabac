"""The dashboard on the admin port: sign-in, the pages, their static assets, and the data API behind them.

    GET  /login, POST /login          sign in (an operator's access key id + secret key, or the admin token)
    POST /logout                      sign out (the cookie is cleared)
    GET  /  /buckets  /jobs  /tenants  /nodes  /audit     pages (a session, else 303 to /login)
    GET  /static/<digest>/<file>      the pages' CSS, JavaScript, uPlot (no session needed; cached for a year)
    GET  /api/v1/dashboard            everything the pages show (atoll.admin.dashboard.data)
    GET  /api/v1/dashboard/history?since=<epoch>   the charts' samples (atoll.admin.dashboard.history)

The two API routes sit in the admin API's route table and take any of its three credentials (bearer token,
SigV4, session cookie); pages take the session cookie only. Pages are rendered on the server (Jinja2,
autoescaped) with every live number in a ``data-field`` element, then kept current by static/dashboard.js, which
polls the two API routes. Every page is sent with ``Content-Security-Policy: default-src 'self'`` (no inline
script or style; data for the scripts travels in ``<script type="application/json">`` blocks and ``data-``
attributes) and ``X-Frame-Options: DENY``.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, unquote

import jinja2
from markupsafe import Markup

from atoll.admin.dashboard import units
from atoll.admin.dashboard.data import DashboardData
from atoll.admin.dashboard.history import History, Sampler
from atoll.admin.dashboard.paths import field_path, lookup, row_keys
from atoll.admin.dashboard.session import (CSRF_HEADER, TOKEN_ACTOR, LoginLimiter, Session, SessionKeys,
                                           clear_cookie, cookie_from, set_cookie)
from atoll.admin.jsonapi import ApiError, json_response
from atoll.core.ingest import run_io
from atoll.http.server import BodyTooLarge, Request, Response

if TYPE_CHECKING:
    from atoll.admin.app import AdminApp

log = logging.getLogger("atoll.admin")

HERE = os.path.dirname(os.path.abspath(__file__))
PAGES = {"/": ("overview", "Overview"), "/buckets": ("buckets", "Buckets"), "/jobs": ("jobs", "Staging jobs"),
         "/tenants": ("tenants", "Tenants"), "/nodes": ("nodes", "Nodes"), "/audit": ("audit", "Audit log")}
MAX_LOGIN_BODY = 8 << 10
MAX_CREDENTIAL = 1024
PAGE_HEADERS = [("Content-Type", "text/html; charset=utf-8"), ("Cache-Control", "no-store"),
                ("Content-Security-Policy", "default-src 'self'; base-uri 'none'; form-action 'self'; "
                                            "frame-ancestors 'none'"),
                ("X-Frame-Options", "DENY"), ("X-Content-Type-Options", "nosniff"),
                ("Referrer-Policy", "same-origin")]
CONTENT_TYPES = {".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8",
                 ".svg": "image/svg+xml", "": "text/plain; charset=utf-8"}
IMMUTABLE = "public, max-age=31536000, immutable"
LOGIN_FAILED = "Sign-in failed: the credentials are wrong or do not belong to an operator."


@dataclass(frozen=True, slots=True)
class DashboardSettings:
    sample_interval: float = 5.0  # config dashboard_sample_interval
    history: float = 3600.0  # dashboard_history
    session_ttl: float = 43200.0  # dashboard_session_ttl


@dataclass(frozen=True, slots=True)
class Asset:
    body: bytes
    content_type: str
    digest: str


def _load_assets() -> dict[str, Asset]:
    """Every file under static/, by its path there (blocking: call it through run_io)."""
    root = os.path.join(HERE, "static")
    assets = {}
    for directory, _, names in os.walk(root):
        for name in names:
            path = os.path.join(directory, name)
            with open(path, "rb") as f:
                body = f.read()
            ext = os.path.splitext(name)[1]
            assets[os.path.relpath(path, root).replace(os.sep, "/")] = Asset(
                body, CONTENT_TYPES.get(ext, CONTENT_TYPES[""]), hashlib.sha256(body).hexdigest()[:12])
    return assets


def _page(status: int, html: str, headers: list[tuple[str, str]] | None = None) -> Response:
    return Response(status=status, body=html.encode("utf-8"), headers=[*PAGE_HEADERS, *(headers or [])])


def _redirect(location: str, headers: list[tuple[str, str]] | None = None) -> Response:
    return Response(status=303, headers=[("Location", location), ("Cache-Control", "no-store"),
                                         *(headers or [])])


class Dashboard:
    def __init__(self, app: "AdminApp", token: str, settings: DashboardSettings | None = None) -> None:
        self.app = app
        self.settings = settings or DashboardSettings()
        self.keys = SessionKeys(token)
        self._token = token
        self.limiter = LoginLimiter()
        self.history = History(self.settings.sample_interval, self.settings.history)
        self.sampler = Sampler(app.tier, self.history, started=app.started, peers_dir=app.peers_dir,
                               governor=lambda: app.ns.governor)
        self.data = DashboardData(app, scan_ttl=self.settings.sample_interval)
        self._assets: dict[str, Asset] | None = None
        self._env = jinja2.Environment(loader=jinja2.FileSystemLoader(os.path.join(HERE, "templates")),
                                       autoescape=True, auto_reload=False, undefined=jinja2.StrictUndefined,
                                       trim_blocks=True, lstrip_blocks=True)
        self._env.filters["fmt"] = units.format_value
        self._env.globals.update(field=_field, progress=_progress, rows=_rows, static_url=self._static_url)

    # lifecycle (atoll.server.lifecycle.run_worker) ------------------------------------------------------
    def start(self) -> None:
        self.sampler.start()

    async def stop(self) -> None:
        await self.sampler.stop()

    # routing ----------------------------------------------------------------------------------------------
    @staticmethod
    def serves(raw_path: str) -> bool:
        """Whether ``raw_path`` is the dashboard's (pages, sign-in, assets) rather than the API's."""
        path = raw_path.rstrip("/") or "/"
        return path in PAGES or path in ("/login", "/logout", "/favicon.ico", "/static") or \
            path.startswith("/static/")

    def api_routes(self) -> list[tuple[re.Pattern, str, dict[str, Any]]]:
        return [(re.compile(r"/api/v1/dashboard"), "dashboard", {"GET": self.api_document}),
                (re.compile(r"/api/v1/dashboard/history"), "dashboard_history", {"GET": self.api_history})]

    # sessions, for AdminApp.handle ------------------------------------------------------------------------
    async def session_of(self, request: Request) -> Session | None:
        """The request's valid session: signed, unexpired, and its operator still an operator with the same
        secret key (a token session: the token it was made with, which the key is derived from)."""
        session = self.keys.verify(cookie_from(request.headers.get("cookie")))
        if session is None:
            return None
        if session.actor == TOKEN_ACTOR:
            return session if not session.fingerprint else None
        identity = await self.app.ns.identity(session.actor)
        if identity is None or not identity.operator or not hmac.compare_digest(
                self.keys.fingerprint(identity.secret_key), session.fingerprint):
            return None
        return session

    def require_csrf(self, request: Request, session: Session) -> None:
        if request.method not in ("GET", "HEAD") and not self.keys.csrf_matches(session,
                                                                                request.headers.get(CSRF_HEADER)):
            raise ApiError(403, "CSRFCheckFailed", "A request authenticated by the dashboard's session cookie must "
                           "carry the page's CSRF value in the X-Atoll-CSRF header.")

    # pages ------------------------------------------------------------------------------------------------
    async def handle_page(self, request: Request) -> Response:
        path = request.raw_path.rstrip("/") or "/"
        await self._ready()
        if path.startswith("/static/") or path in ("/static", "/favicon.ico"):
            request.state["op"] = "dashboard.static"
            return self._static(request, path)
        if path == "/login":
            request.state["op"] = "dashboard.login"
            if request.method == "POST":
                return await self._login(request)
            self._only_get(request)
            if await self.session_of(request) is not None:
                return _redirect("/")
            return _page(200, self._render("login.html", error=None))
        if path == "/logout":
            request.state["op"] = "dashboard.logout"
            return await self._logout(request)
        name, title = PAGES[path]
        request.state["op"] = f"dashboard.{name}"
        self._only_get(request)
        session = await self.session_of(request)
        if session is None:
            return _redirect("/login")
        self._signed_in(request, session)
        document = await self.data.document()
        html = self._render(f"{name}.html", page=name, title=title, doc=document, csrf=self.keys.csrf(session),
                            actor=session.actor)
        return _page(200, html)

    @staticmethod
    def _only_get(request: Request, allow: tuple[str, ...] = ("GET",)) -> None:
        if request.method not in allow:
            raise ApiError(405, "MethodNotAllowed", f"{request.method} is not allowed here; use GET.",
                           [("Allow", ", ".join(allow))])

    @staticmethod
    def _signed_in(request: Request, session: Session) -> None:
        request.state["actor"] = session.actor
        if session.actor != TOKEN_ACTOR:
            request.state["access_key"] = session.actor

    def _render(self, template: str, **context: Any) -> str:
        return self._env.get_template(template).render(**context)

    async def _ready(self) -> None:
        """Read the assets and templates once, off the event loop (both are small)."""
        if self._assets is None:
            names = self._env.list_templates()
            self._assets = await run_io(_load_assets)
            await run_io(lambda: [self._env.get_template(name) for name in names])

    def _static_url(self, name: str) -> str:
        assert self._assets is not None
        return f"/static/{self._assets[name].digest}/{name}"

    def _static(self, request: Request, path: str) -> Response:
        self._only_get(request, ("GET", "HEAD"))
        assert self._assets is not None
        digest, name = "", "favicon.svg"
        if path != "/favicon.ico":
            digest, _, name = path[len("/static/"):].partition("/")  # "/static": nothing
        asset = self._assets.get(unquote(name))
        if asset is None:
            return Response(status=404, body=b"Not found\n", headers=[("Content-Type", "text/plain; charset=utf-8"),
                                                                       ("Cache-Control", "no-store")])
        cache = IMMUTABLE if digest == asset.digest else "no-cache"
        return Response(status=200, body=asset.body, head_only=request.method == "HEAD",
                        content_length=len(asset.body) if request.method == "HEAD" else None,
                        headers=[("Content-Type", asset.content_type), ("Cache-Control", cache),
                                 ("ETag", f'"{asset.digest}"'), ("X-Content-Type-Options", "nosniff")])

    # sign-in ----------------------------------------------------------------------------------------------
    @staticmethod
    def _same_origin(request: Request) -> bool:
        """A browser's POST names its page's origin; one from another site is refused (cross-site sign-in or
        sign-out). Clients that send no Origin (curl, tests) are let through: they carry no ambient cookie."""
        origin = request.headers.get("origin")
        if origin is None:
            return True
        host = request.headers.get("host", "")
        return bool(host) and origin.lower() in (f"http://{host}".lower(), f"https://{host}".lower())

    async def _form(self, request: Request) -> dict[str, str]:
        try:
            raw = await request.read_body(MAX_LOGIN_BODY)
        except BodyTooLarge:
            raise ApiError(413, "BodyTooLarge", f"The form exceeds {MAX_LOGIN_BODY} bytes.") from None
        try:
            fields = parse_qs(raw.decode("utf-8"), keep_blank_values=True, max_num_fields=20)
        except (UnicodeDecodeError, ValueError):
            fields = {}
        return {name: values[-1] for name, values in fields.items()}

    async def _login(self, request: Request) -> Response:
        if not self._same_origin(request):
            return _page(403, self._render("login.html", error="This sign-in came from another site."))
        address = request.client or "-"
        wait = self.limiter.retry_after(address)
        if wait > 0:
            log.warning("dashboard sign-in from %s refused: too many failed attempts", address)
            return _page(429, self._render("login.html", error=f"Too many failed sign-ins from this address; try "
                                                               f"again in {int(wait) + 1} s."),
                         [("Retry-After", str(int(wait) + 1))])
        form = await self._form(request)
        token = form.get("token", "").strip()
        access_key = form.get("access_key", "").strip()
        secret_key = form.get("secret_key", "")
        session = None
        if token:
            kind = "admin token"
            if len(token) <= MAX_CREDENTIAL and hmac.compare_digest(token.encode(), self._token.encode()):
                session = self.keys.issue(TOKEN_ACTOR, self.settings.session_ttl)
        else:
            kind = "operator key"
            identity = await self.app.ns.identity(access_key) \
                if access_key and len(access_key) <= MAX_CREDENTIAL and len(secret_key) <= MAX_CREDENTIAL else None
            # The comparison runs whether or not the key exists, against the key's secret or a dummy.
            expected = identity.secret_key if identity is not None else self._token + "\0"
            matches = hmac.compare_digest(secret_key.encode(), expected.encode())
            if identity is not None and matches and identity.operator:
                session = self.keys.issue(access_key, self.settings.session_ttl,
                                          self.keys.fingerprint(identity.secret_key))
        if session is None:
            self.limiter.failed(address)
            # Never the submitted values: a secret typed into the wrong field must not reach the log.
            log.warning("dashboard sign-in with an %s failed from %s", kind, address)
            return _page(401, self._render("login.html", error=LOGIN_FAILED))
        self.limiter.succeeded(address)
        request.state["actor"] = session.actor
        log.info("dashboard sign-in of %s from %s", session.actor, address)
        return _redirect("/", [("Set-Cookie", set_cookie(session, self.settings.session_ttl))])

    async def _logout(self, request: Request) -> Response:
        if request.method != "POST":
            raise ApiError(405, "MethodNotAllowed", f"{request.method} is not allowed here; use POST.",
                           [("Allow", "POST")])
        if not self._same_origin(request):
            raise ApiError(403, "CSRFCheckFailed", "This sign-out came from another site.")
        session = await self.session_of(request)
        if session is not None:
            form = await self._form(request)
            given = request.headers.get(CSRF_HEADER) or form.get("csrf")
            if not self.keys.csrf_matches(session, given):
                raise ApiError(403, "CSRFCheckFailed", "Sign out from the dashboard's own page.")
            self._signed_in(request, session)
            log.info("dashboard sign-out of %s", session.actor)
        return _redirect("/login", [("Set-Cookie", clear_cookie())])

    # data API ---------------------------------------------------------------------------------------------
    async def api_document(self, request: Request, params: dict) -> Response:
        return json_response(200, await self.data.document())

    async def api_history(self, request: Request, params: dict) -> Response:
        query = parse_qs(request.raw_query, keep_blank_values=True)
        unknown = sorted(set(query) - {"since"})
        if unknown:
            raise ApiError(400, "InvalidArgument", f"Unknown query parameter {unknown[0][:64]!r}; expected since.")
        since = 0.0
        if "since" in query:
            text = query["since"][-1]
            try:
                since = float(text)
            except ValueError:
                since = float("nan")
            if not since == since or since in (float("inf"), float("-inf")):  # NaN or infinite
                raise ApiError(400, "InvalidArgument", "'since' must be a time in seconds since the epoch.")
        return json_response(200, {"interval": self.history.interval, "samples": self.history.since(since)})


# template helpers -----------------------------------------------------------------------------------------------
def _json_attr(value: Any) -> Markup:
    # htmlsafe_json_dumps escapes <, >, & and ' : safe inside a single-quoted attribute
    return jinja2.utils.htmlsafe_json_dumps(value)


@jinja2.pass_context
def _field(context, *parts: Any, fmt: str = "text", tag: str = "span", cls: str = "") -> Markup:
    """An element showing the document's value at ``parts`` with its ``data-field`` path and ``data-value``."""
    value = lookup(context["doc"], parts)
    state = Markup(' data-state="{}"').format(value) if fmt == "state" else ""
    return Markup("<{tag} class=\"field {cls}\" data-field=\"{path}\" data-format=\"{fmt}\" data-value='{raw}'"
                  "{state}>{text}</{tag}>").format(
        tag=Markup(tag), cls=cls, path=field_path(parts), fmt=fmt, raw=_json_attr(value), state=state,
        text=units.format_value(value, fmt))


@jinja2.pass_context
def _progress(context, *parts: Any) -> Markup:
    """A progress bar of the fraction (0..1) at ``parts``."""
    value = lookup(context["doc"], parts) or 0.0
    return Markup("<progress class=\"field\" max=\"1\" value=\"{value}\" data-field=\"{path}\" "
                  "data-format=\"fraction\" data-value='{raw}'>{text}</progress>").format(
        value=value, path=field_path(parts), raw=_json_attr(value), text=units.format_percent(value))


@jinja2.pass_context
def _rows(context, *parts: Any) -> Markup:
    """Attributes of a table body whose rows are the keys of the mapping (or the ids of the list) at ``parts``:
    the page script re-fetches the page's tables when they change."""
    return Markup(" data-rows=\"{}\" data-keys='{}'").format(field_path(parts),
                                                             _json_attr(row_keys(lookup(context["doc"], parts))))
