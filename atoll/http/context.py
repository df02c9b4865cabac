"""What the HTTP server knows about the request being handled, for code far from it (log records).

``request_id`` holds the id of the request (``Request.id``, the access log's ``request_id``) while its handler runs,
and in tasks the handler starts; ``None`` outside any request. Work handed to the I/O thread pool
(``atoll.core.ingest.run_io``: ``run_in_executor``, which copies no context, on purpose: the hot path) does not
see it. The server sets it around the handler call
(atoll.http.server.HttpConnection._start); atoll.server.logsetup adds it to every event log line. It lives here,
not in atoll.server, so that the HTTP layer imports nothing above it.
"""

from __future__ import annotations

from contextvars import ContextVar

request_id: ContextVar[str | None] = ContextVar("atoll_request_id", default=None)
