"""Ending the background tasks a component started, when it stops."""

from __future__ import annotations

import asyncio
import logging

log = logging.getLogger("atoll.tasks")


async def cancel_and_wait(*tasks: asyncio.Task | None) -> None:
    """Cancel ``tasks`` (``None`` entries are skipped) and wait until every one has ended.

    A task's own last error is logged, not raised: a stopping component must not trip over the failure of a
    loop it is ending anyway. A cancellation of the caller while it waits is not swallowed."""
    running = [task for task in tasks if task is not None]
    for task in running:
        task.cancel()
    if not running:
        return
    for task, outcome in zip(running, await asyncio.gather(*running, return_exceptions=True)):
        if isinstance(outcome, Exception):
            log.error("background task %s ended with an error: %r", task.get_name(), outcome)
