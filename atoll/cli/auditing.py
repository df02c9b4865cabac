"""Audit entries for operator actions taken with the CLI (#10).

The CLI changes the metadata store itself rather than asking a server (it works with no server running), so it
writes its own entries into the same audit table as the admin API (atoll.admin.audit): the actor is
``cli:<unix user>``, the node is the host's name, and there is no request id. Details are built by the caller from
values it knows to be safe (never a secret key, token or link option value).
"""

from __future__ import annotations

import os
import pwd
import socket
import time
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator

from atoll import errors
from atoll.server.logsetup import redact
from atoll.stores.meta.sql_audit import AuditEntry

MAX_TEXT = 256


def cli_actor() -> str:
    try:
        user = pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        user = f"uid{os.getuid()}"
    return f"cli:{user}"


async def record(meta, action: str, target: str, detail: dict[str, Any] | None, outcome: str) -> None:
    entry = AuditEntry(time=time.time(), actor=cli_actor(), action=action, target=redact(target[:MAX_TEXT]),
                       outcome=outcome, node=socket.gethostname(), detail=detail or {})
    try:
        await meta.record_audit(entry)
    except Exception as exc:  # noqa: BLE001 - the action stands; say that its trace is missing
        from atoll.cli.main import err

        err.print(f"[yellow]warning:[/] audit entry for {action} not recorded ({type(exc).__name__})",
                  highlight=False)


@asynccontextmanager
async def audited(meta, action: str, target: str, detail: dict[str, Any] | None = None) -> AsyncIterator[None]:
    """Record one entry for the action run inside: "ok", or the name of the error that refused it."""
    outcome = "ok"
    try:
        yield
    except errors.AtollError as exc:
        outcome = type(exc).__name__
        raise
    except BaseException:
        outcome = "InternalError"
        raise
    finally:
        await record(meta, action, target, detail, outcome)
