"""Between the HTTP front ends and ``atoll.core.qos``: admit a request by its tenant's and bucket's rate limits,
and charge what its answer sends.

A refused request's body that is on its way (declared, at most DISCARD_LIMIT bytes: the SDKs' block and part
sizes) is read and thrown away, so the connection stays usable for the client's retry and the client is never
cut off mid-send. A body the client holds back for ``100 Continue`` is not invited, and one larger than the limit
is not stored: the HTTP server answers and closes lingeringly, discarding what still arrives (as for every early
answer, atoll.http.server ``_linger``).
"""

from __future__ import annotations

from atoll import errors
from atoll.core.qos import Governor, Ticket
from atoll.http.server import Request, Response

DISCARD_LIMIT = 8 << 20


async def admit(governor: Governor, request: Request, tenant: str | None, bucket: str | None,
                bytes_in: int) -> Ticket | None:
    try:
        return await governor.admit(tenant, bucket, bytes_in, sends_body=request.method == "GET")
    except errors.Throttled:
        await _discard_small_body(request)
        raise


def charge(ticket: Ticket | None, response: Response) -> None:
    """Charge the body the answer will send (a successful one: errors are small and not the client's data)."""
    if ticket is not None and response.status < 300 and not response.head_only:
        ticket.sent(response.content_length if response.content_length is not None else len(response.body))


async def _discard_small_body(request: Request) -> None:
    if request.body_complete or request.headers.get("expect", "").lower() == "100-continue":
        return
    length = request.content_length
    if length is None or length > DISCARD_LIMIT:
        return
    async for _ in request.body_chunks(min_size=64 << 10):
        pass
