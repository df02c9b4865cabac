"""Leases on objects and buckets, as Azure Blob specifies them ("Lease Blob", "Lease Container"): pure state.

A lease is held by time, not by a connection: the stored row keeps wall-clock deadlines (``expires_at`` of a fixed
lease, ``break_at`` of a breaking one) and every reader derives the effective state at ``now``, so every worker
process sees the same lease without anyone having to wake up when it lapses. Stored states are only ``leased``,
``breaking`` and ``broken``; ``expired`` (a fixed lease past its deadline) and ``broken`` (a breaking lease past
its break time) are derived, and ``available`` is the absence of a row.

No I/O here: ``apply`` takes the current lease and returns the next one, raising lease errors with Azure's codes;
the metadata store runs it inside one transaction (``MetaStore.apply_lease``).
"""

from __future__ import annotations

import dataclasses
import math
import uuid
from dataclasses import dataclass

from atoll import errors

AVAILABLE, LEASED, EXPIRED, BREAKING, BROKEN = "available", "leased", "expired", "breaking", "broken"
INFINITE = -1
MIN_DURATION, MAX_DURATION = 15, 60
MAX_BREAK_PERIOD = 60
ACTIONS = ("acquire", "renew", "change", "release", "break")


@dataclass(slots=True, frozen=True)
class Lease:
    state: str  # stored: LEASED, BREAKING or BROKEN
    lease_id: str
    duration: int  # seconds, or INFINITE
    expires_at: float = 0.0  # a fixed lease's deadline (epoch seconds); 0 for an infinite one
    break_at: float = 0.0  # when a breaking lease becomes broken

    def effective_state(self, now: float) -> str:
        if self.state == LEASED and self.duration != INFINITE and now >= self.expires_at:
            return EXPIRED
        if self.state == BREAKING and now >= self.break_at:
            return BROKEN
        return self.state

    def held(self, now: float) -> bool:
        """Whether writes need its id: leased or breaking (Azure's lease status 'locked')."""
        return self.effective_state(now) in (LEASED, BREAKING)


@dataclass(slots=True, frozen=True)
class LeaseView:
    """What Get Properties and listings show: x-ms-lease-status / -state / -duration."""

    status: str  # locked | unlocked
    state: str  # available | leased | expired | breaking | broken
    duration: str  # infinite | fixed | '' (only while leased)


@dataclass(slots=True, frozen=True)
class LeaseRequest:
    action: str
    lease_id: str | None = None  # x-ms-lease-id
    proposed_id: str | None = None  # x-ms-proposed-lease-id
    duration: int | None = None  # x-ms-lease-duration (acquire)
    break_period: int | None = None  # x-ms-lease-break-period (break; None = the lease's remaining time)


@dataclass(slots=True, frozen=True)
class LeaseOutcome:
    lease: Lease | None  # the lease to store; None removes it (available)
    lease_id: str | None  # x-ms-lease-id of the answer (acquire, renew, change, release)
    lease_time: int | None = None  # x-ms-lease-time of a break: seconds until broken


def view(lease: Lease | None, now: float) -> LeaseView:
    state = AVAILABLE if lease is None else lease.effective_state(now)
    if state in (LEASED, BREAKING):
        duration = ("infinite" if lease.duration == INFINITE else "fixed") if state == LEASED else ""
        return LeaseView("locked", state, duration)
    return LeaseView("unlocked", state, "")


def parse_request(action: str | None, *, lease_id: str | None, proposed_id: str | None, duration: str | None,
                  break_period: str | None) -> LeaseRequest:
    """Validate the headers of a lease request (InvalidHeaderValue / MissingRequiredHeader, 400)."""
    action = (action or "").strip().lower()
    if not action:
        raise errors.LeaseHeaderError("An HTTP header that's mandatory for this request is not specified.",
                                      code="MissingRequiredHeader", header="x-ms-lease-action")
    if action not in ACTIONS:
        raise errors.LeaseHeaderError("The value for one of the HTTP headers is not in the correct format.",
                                      header="x-ms-lease-action")
    lease_id = _lease_id(lease_id, "x-ms-lease-id")
    proposed_id = _lease_id(proposed_id, "x-ms-proposed-lease-id")
    parsed_duration = parsed_break = None
    if action == "acquire":
        parsed_duration = _integer(duration, "x-ms-lease-duration", required=True)
        if parsed_duration != INFINITE and not MIN_DURATION <= parsed_duration <= MAX_DURATION:
            raise errors.LeaseHeaderError("The value for one of the HTTP headers is not in the correct format.",
                                          header="x-ms-lease-duration", value=str(parsed_duration))
    if action == "break" and break_period is not None:
        parsed_break = _integer(break_period, "x-ms-lease-break-period", required=True)
        if not 0 <= parsed_break <= MAX_BREAK_PERIOD:
            raise errors.LeaseHeaderError("The value for one of the HTTP headers is not in the correct format.",
                                          header="x-ms-lease-break-period", value=str(parsed_break))
    if action in ("renew", "change", "release") and lease_id is None:
        raise errors.LeaseHeaderError("An HTTP header that's mandatory for this request is not specified.",
                                      code="MissingRequiredHeader", header="x-ms-lease-id")
    if action == "change" and proposed_id is None:
        raise errors.LeaseHeaderError("An HTTP header that's mandatory for this request is not specified.",
                                      code="MissingRequiredHeader", header="x-ms-proposed-lease-id")
    return LeaseRequest(action, lease_id, proposed_id, parsed_duration, parsed_break)


def _lease_id(value: str | None, header: str) -> str | None:
    if value is None:
        return None
    try:
        # Azure lease ids are GUIDs; the canonical lower-case form is what is stored and compared.
        return str(uuid.UUID(value.strip()))
    except ValueError:
        raise errors.LeaseHeaderError("The value for one of the HTTP headers is not in the correct format.",
                                      header=header, value=value[:64]) from None


def _integer(value: str | None, header: str, *, required: bool) -> int:
    if value is None or not value.strip().lstrip("-").isdigit():
        if value is None and required:
            raise errors.LeaseHeaderError("An HTTP header that's mandatory for this request is not specified.",
                                          code="MissingRequiredHeader", header=header)
        raise errors.LeaseHeaderError("The value for one of the HTTP headers is not in the correct format.",
                                      header=header, value=(value or "")[:64])
    return int(value)


def apply(lease: Lease | None, request: LeaseRequest, now: float) -> LeaseOutcome:
    """The outcome of ``request`` on ``lease`` at ``now`` (Azure's table "Outcomes of lease operations")."""
    state = AVAILABLE if lease is None else lease.effective_state(now)
    action = request.action
    if action == "acquire":
        return _acquire(lease, state, request, now)
    if action == "break":
        return _break(lease, state, request, now)
    if state == AVAILABLE:
        # As Azurite answers (the suite's reference): renew and release name an id that matches nothing.
        if action == "change":
            raise errors.LeaseNotPresentWithLeaseOperation()
        raise errors.LeaseIdMismatchWithLeaseOperation()
    assert lease is not None
    if action == "renew":
        if request.lease_id != lease.lease_id:
            raise errors.LeaseIdMismatchWithLeaseOperation()
        if state == BREAKING:
            raise errors.LeaseIsBreakingAndCannotBeAcquired("The lease ID matched, but the lease is currently in "
                                                            "breaking state and cannot be renewed.")
        if state == BROKEN:
            raise errors.LeaseIsBrokenAndCannotBeRenewed()
        renewed = _held(lease.lease_id, lease.duration, now)
        return LeaseOutcome(renewed, renewed.lease_id)
    if action == "change":
        if state == BREAKING:
            if lease.lease_id in (request.lease_id, request.proposed_id):
                raise errors.LeaseIsBreakingAndCannotBeChanged()
            raise errors.LeaseIdMismatchWithLeaseOperation()
        if state != LEASED:
            raise errors.LeaseNotPresentWithLeaseOperation()
        # Changing (A)->(B) or repeating it as (B)->... once it took effect both succeed: a retried change is safe.
        if lease.lease_id not in (request.lease_id, request.proposed_id):
            raise errors.LeaseIdMismatchWithLeaseOperation()
        changed = dataclasses.replace(lease, lease_id=request.proposed_id)
        return LeaseOutcome(changed, changed.lease_id)
    if action == "release":
        if request.lease_id != lease.lease_id:
            raise errors.LeaseIdMismatchWithLeaseOperation()
        return LeaseOutcome(None, None)
    raise errors.LeaseHeaderError("The value for one of the HTTP headers is not in the correct format.",
                                  header="x-ms-lease-action", value=action)


def _held(lease_id: str, duration: int, now: float) -> Lease:
    return Lease(LEASED, lease_id, duration, 0.0 if duration == INFINITE else now + duration)


def _acquire(lease: Lease | None, state: str, request: LeaseRequest, now: float) -> LeaseOutcome:
    duration = request.duration if request.duration is not None else INFINITE
    if state == LEASED:
        # Re-acquiring with the lease's own id is allowed (and sets the new duration); anything else conflicts.
        if request.proposed_id != lease.lease_id:
            raise errors.LeaseAlreadyPresent()
    elif state == BREAKING:
        if request.proposed_id == lease.lease_id:
            raise errors.LeaseIsBreakingAndCannotBeAcquired()
        raise errors.LeaseAlreadyPresent()
    acquired = _held(request.proposed_id or str(uuid.uuid4()), duration, now)
    return LeaseOutcome(acquired, acquired.lease_id)


def _break(lease: Lease | None, state: str, request: LeaseRequest, now: float) -> LeaseOutcome:
    if state == AVAILABLE:
        raise errors.LeaseNotPresentWithLeaseOperation()
    assert lease is not None
    if state == EXPIRED:
        return LeaseOutcome(None, None, 0)  # Azure: breaking an expired lease leaves the blob available
    if state == BROKEN:
        return LeaseOutcome(Lease(BROKEN, lease.lease_id, lease.duration), None, 0)
    if state == LEASED:
        if request.break_period is None:
            # No period: an infinite lease breaks at once, a fixed one when its remaining time runs out.
            break_at = now if lease.duration == INFINITE else lease.expires_at
        elif lease.duration == INFINITE:
            break_at = now + request.break_period
        else:
            break_at = min(lease.expires_at, now + request.break_period)
    else:  # breaking: a new period may only shorten the break
        break_at = lease.break_at if request.break_period is None else min(lease.break_at,
                                                                            now + request.break_period)
    if break_at <= now:
        return LeaseOutcome(Lease(BROKEN, lease.lease_id, lease.duration), None, 0)
    return LeaseOutcome(Lease(BREAKING, lease.lease_id, lease.duration, lease.expires_at, break_at), None,
                        math.ceil(break_at - now))


def check_write(lease: Lease | None, lease_id: str | None, now: float, *, container: bool = False) -> None:
    """A write, property change or delete of a leased object (or Delete Container of a leased bucket) must
    name the lease; naming a lease that is not held is refused too (412 in Azure; AccessDenied on S3)."""
    held = lease is not None and lease.held(now)
    if lease_id is None:
        if held:
            raise errors.LeaseIdMissing("There is currently a lease on the container and no lease ID was specified "
                                        "in the request." if container else "")
        return
    if not held:
        raise (errors.LeaseNotPresentWithContainerOperation() if container
               else errors.LeaseNotPresentWithBlobOperation())
    if _canonical(lease_id) != lease.lease_id:
        raise (errors.LeaseIdMismatchWithContainerOperation() if container
               else errors.LeaseIdMismatchWithBlobOperation())


def _canonical(lease_id: str) -> str:
    try:
        return str(uuid.UUID(lease_id.strip()))
    except ValueError:
        return lease_id
