"""The web dashboard served on the admin port (issue 10; docs/dashboard.md).

    session.py   sign-in sessions: signed cookies, CSRF values, a limit on failed sign-ins
    pages.py     the pages, sign-in and sign-out, static assets, and the two data routes
    data.py      GET /api/v1/dashboard: everything the pages show, current values
    history.py   GET /api/v1/dashboard/history: the in-memory sampler behind the charts
    paths.py     the ``data-field`` path syntax
    units.py     how numbers are shown (static/dashboard.js mirrors it)

DOM contract (what the browser tests rely on):

- Every live number or text has ``data-field="<path>"`` into the /api/v1/dashboard document and
  ``data-value`` = that value as JSON text, and ``data-format`` saying how it is shown (bytes, count, rate,
  per_second, percent, seconds, clock, datetime, text, state; ``fraction`` on ``<progress>`` bars).
  Path syntax (atoll.admin.dashboard.paths): the keys from the root joined by ``.``, ``%`` and ``.`` inside a key
  written ``%25`` and ``%2E``, list items by index: ``buckets.<bucket>.backlog.objects``,
  ``buckets.<bucket>.recovery_point_seconds``, ``tenants.<tenant>.rates.throttled_per_second``,
  ``jobs.<id>.progress.fraction``, ``cold.<endpoint>.state``, ``nodes.<node>.state``, ``warm.resident_bytes``,
  ``banner.text``.
- ``#last-update[data-time]``: epoch seconds of the document last shown.
- Charts: ``div[data-chart=<name>]`` with ``data-points`` = points plotted, growing as samples arrive.
- Actions: ``button[data-action=drain-pause|drain-resume]`` (overview), ``button[data-action=cancel-job]
  [data-job-id]`` and ``form[data-action=start-stage]`` (jobs), ``form[data-action=pin]`` and
  ``form[data-action=unpin]`` (buckets); each opens ``dialog#confirm`` (``#confirm-text``, ``#confirm-yes``,
  ``#confirm-no``); the outcome shows in ``#flash[data-outcome=ok|error]`` (``pending`` while it runs).
- ``#banner[data-level=ok|warning|critical]``: the island's state in one line (critical while a cold store is
  partitioned).
- Audit rows: ``tr[data-audit-id]``; navigation ``nav a[href="/buckets"]`` etc.
"""

from atoll.admin.dashboard.pages import Dashboard, DashboardSettings

__all__ = ["Dashboard", "DashboardSettings"]
