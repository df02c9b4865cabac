"""Asynchronous copies (Azure Copy Blob): started by one request, run in the background by the worker that took
it, observed by any worker through the copy state in the metadata store.

A copy from this Atoll or from the destination's own cold store completes before the answer (a server-side copy;
Azure allows Copy Blob to finish synchronously). A fetched source runs in the background: the destination key
keeps its current version (or gets an empty placeholder, as Azure creates the destination at once) until the
whole source is staged and committed in one metadata transaction, so no reader ever sees a partial blob. The
running worker renews a heartbeat; a pending copy whose heartbeat stopped (its worker died) is reported, and
recorded, as failed.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid

from atoll import errors
from atoll.core import fromurl
from atoll.core.models import CopyState, Identity, ObjectVersion
from atoll.core.namespace import MAX_SINGLE_PUT, Namespace

log = logging.getLogger("atoll.copies")

HEARTBEAT_SECONDS = 2.0
DEAD_AFTER_SECONDS = 30.0  # a pending copy not renewed for this long died with its worker
_PROGRESS_EVERY = 1.0

_running: dict[str, asyncio.Task] = {}  # copy id -> task, in this worker


class CopyStopped(Exception):
    """The copy was aborted or replaced by a newer copy while it ran."""


async def start_copy(ns: Namespace, identity: Identity, source: fromurl.UrlSource, bucket: str, key: str, *,
                     user_meta: dict[str, str] | None, max_size: int = MAX_SINGLE_PUT,
                     lease_id: str | None = None) -> CopyState:
    """Start copying ``source`` into ``bucket``/``key``; returns the state to answer with (success when the copy
    completed at once, pending when it runs on). ``user_meta`` None: the source's. ``lease_id``: the destination's
    lease, named at the start; the copy writes under it when it finishes."""
    fromurl.parse_source_url(source.url)
    await ns.bucket_for(identity, bucket, "write", key)
    now = time.time()
    state = CopyState(bucket=bucket, key=key, copy_id=str(uuid.uuid4()), source=fromurl.redacted(source.url),
                      status="pending", started=now, heartbeat=now)
    ref = await fromurl.locate(ns, identity, source, bucket)
    if ref is not None:
        version = await fromurl.copy_into(ns, identity, source, bucket, key, headers=None, user_meta=user_meta,
                                          max_size=max_size, lease_id=lease_id)
        state.status, state.completed = "success", time.time()
        state.copied = state.total = version.size
        state.version_id = version.version_id
        await ns.meta.put_copy(state)
        return state
    current = await ns.meta.get_object(bucket, key)
    if current is None:
        current = await ns.put_object(identity, bucket, key, _empty(), headers={}, user_meta=user_meta or {},
                                      algorithms=set(), verify=lambda digests, size: {}, lease_id=lease_id)
    state.version_id = current.version_id
    await ns.meta.put_copy(state)
    task = asyncio.get_running_loop().create_task(_run(ns, identity, source, state, user_meta, max_size, lease_id))
    _running[state.copy_id] = task
    task.add_done_callback(lambda _: _running.pop(state.copy_id, None))
    return state


async def _empty():
    return
    yield b""  # noqa: unreachable - makes this an async generator


async def _run(ns: Namespace, identity: Identity, source: fromurl.UrlSource, state: CopyState,
               user_meta: dict[str, str] | None, max_size: int, lease_id: str | None = None) -> None:
    meta = ns.meta
    last = 0.0

    async def progress(copied: int, total: int) -> None:
        nonlocal last
        moment = time.monotonic()
        if moment - last < _PROGRESS_EVERY and copied < total:
            return
        last = moment
        if not await meta.update_copy(state.bucket, state.key, state.copy_id, copied=copied, total=total,
                                      heartbeat=time.time()):
            raise CopyStopped()

    async def heartbeat() -> None:
        while True:
            await asyncio.sleep(HEARTBEAT_SECONDS)
            if not await meta.update_copy(state.bucket, state.key, state.copy_id, heartbeat=time.time()):
                copier.cancel()
                return

    copier = asyncio.current_task()
    beating = asyncio.get_running_loop().create_task(heartbeat())
    try:
        version = await fromurl.copy_into(ns, identity, source, state.bucket, state.key, headers=None,
                                          user_meta=user_meta, max_size=max_size, progress=progress,
                                          lease_id=lease_id)
    except (CopyStopped, asyncio.CancelledError):
        log.info("copy %s into %s/%s stopped before it finished", state.copy_id, state.bucket, state.key[:200])
        return
    except fromurl.CopySourceError as exc:
        await _fail(meta, state, f"{exc.status} {exc.message}")
        return
    except errors.AtollError as exc:
        await _fail(meta, state, f"{type(exc).__name__}: {exc.message}")
        return
    except Exception:  # noqa: BLE001 - recorded as a failed copy; the client sees it in the copy status
        log.exception("copy %s failed", state.copy_id)
        await _fail(meta, state, "internal error")
        return
    finally:
        beating.cancel()
    done = await meta.update_copy(state.bucket, state.key, state.copy_id, status="success", copied=version.size,
                                  total=version.size, completed=time.time(), version_id=version.version_id)
    if not done:
        log.info("copy %s into %s/%s finished after it was aborted or replaced", state.copy_id, state.bucket,
                 state.key[:200])


async def _fail(meta, state: CopyState, description: str) -> None:
    await meta.update_copy(state.bucket, state.key, state.copy_id, status="failed", completed=time.time(),
                           description=description[:1024])


async def copy_state(ns: Namespace, version: ObjectVersion) -> CopyState | None:
    """The copy state to report with ``version``: the key's last copy if it produced (or is producing) this
    version. A pending copy whose worker died is recorded as failed here."""
    state = await ns.meta.get_copy(version.bucket, version.key)
    if state is None:
        return None
    if state.status == "pending" and time.time() - state.heartbeat > DEAD_AFTER_SECONDS:
        description = "The copy was interrupted: the server process running it stopped."
        await ns.meta.update_copy(state.bucket, state.key, state.copy_id, status="failed", completed=time.time(),
                                  description=description)
        state = await ns.meta.get_copy(version.bucket, version.key) or state
    if state.version_id != version.version_id:
        return None  # the key was written after the copy (Azure drops the copy properties then)
    return state


async def abort_copy(ns: Namespace, identity: Identity, bucket: str, key: str, copy_id: str) -> None:
    """Abort a pending copy. Raises Conflict with code NoPendingCopyOperation or CopyIdMismatch."""
    await ns.bucket_for(identity, bucket, "write", key)
    state = await ns.meta.get_copy(bucket, key)
    if state is None or state.status != "pending":
        raise errors.Conflict("There is currently no pending copy operation.", code="NoPendingCopyOperation")
    if state.copy_id != copy_id:
        raise errors.Conflict("The specified copy ID did not match the copy ID for the pending copy operation.",
                              code="CopyIdMismatch")
    if not await ns.meta.update_copy(bucket, key, copy_id, status="aborted", completed=time.time(),
                                     description="The copy was aborted."):
        raise errors.Conflict("There is currently no pending copy operation.", code="NoPendingCopyOperation")
    task = _running.get(copy_id)
    if task is not None:
        task.cancel()  # a copy running in another worker stops at its next progress or heartbeat update
