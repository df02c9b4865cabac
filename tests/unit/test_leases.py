"""The lease state machine (atoll.core.leases) against Azure's table of lease outcomes, with explicit clocks."""

from __future__ import annotations

import uuid

import pytest

from atoll import errors
from atoll.core import leases
from atoll.core.leases import BREAKING, BROKEN, EXPIRED, INFINITE, LEASED, Lease, LeaseRequest, apply, view

A, B, C = (str(uuid.uuid4()) for _ in range(3))
T0 = 1_000_000.0


def acquire(lease, *, proposed=None, duration=INFINITE, now=T0):
    return apply(lease, LeaseRequest("acquire", proposed_id=proposed, duration=duration), now)


def leased(lease_id=A, duration=INFINITE, now=T0) -> Lease:
    return acquire(None, proposed=lease_id, duration=duration, now=now).lease


def breaking(period=10) -> Lease:
    return apply(leased(), LeaseRequest("break", break_period=period), T0).lease


def broken() -> Lease:
    return apply(leased(), LeaseRequest("break", break_period=0), T0).lease


def expired() -> Lease:
    return leased(duration=15, now=T0 - 20)


def test_acquire_from_available_uses_the_proposed_id_or_makes_one():
    outcome = acquire(None, proposed=A, duration=15)
    assert outcome.lease_id == A and outcome.lease.expires_at == T0 + 15
    assert view(outcome.lease, T0) == leases.LeaseView("locked", LEASED, "fixed")
    made = acquire(None).lease_id
    assert str(uuid.UUID(made)) == made
    assert view(acquire(None).lease, T0).duration == "infinite"


@pytest.mark.parametrize("lease", [broken(), expired()], ids=["broken", "expired"])
def test_acquire_after_a_lease_ended_takes_a_new_one(lease):
    assert acquire(lease, proposed=B).lease == Lease(LEASED, B, INFINITE)


def test_acquire_while_leased():
    current = leased()
    again = acquire(current, proposed=A, duration=30)
    assert again.lease_id == A and again.lease.duration == 30  # same id: a new duration
    with pytest.raises(errors.LeaseAlreadyPresent):
        acquire(current, proposed=B)
    with pytest.raises(errors.LeaseAlreadyPresent):
        acquire(current)


def test_acquire_while_breaking():
    with pytest.raises(errors.LeaseIsBreakingAndCannotBeAcquired):
        acquire(breaking(), proposed=A)
    with pytest.raises(errors.LeaseAlreadyPresent):
        acquire(breaking(), proposed=B)


def test_fixed_lease_expires_by_time_and_renew_restarts_it():
    current = leased(duration=15)
    assert current.effective_state(T0 + 14.9) == LEASED
    assert current.effective_state(T0 + 15) == EXPIRED and not current.held(T0 + 15)
    renewed = apply(current, LeaseRequest("renew", lease_id=A), T0 + 20)
    assert renewed.lease.expires_at == T0 + 35 and renewed.lease_id == A
    with pytest.raises(errors.LeaseIdMismatchWithLeaseOperation):
        apply(current, LeaseRequest("renew", lease_id=B), T0 + 20)


def test_renew_refusals():
    with pytest.raises(errors.LeaseIsBrokenAndCannotBeRenewed):
        apply(broken(), LeaseRequest("renew", lease_id=A), T0)
    with pytest.raises(errors.LeaseIdMismatchWithLeaseOperation):
        apply(None, LeaseRequest("renew", lease_id=A), T0)


def test_change():
    changed = apply(leased(), LeaseRequest("change", lease_id=A, proposed_id=B), T0)
    assert changed.lease.lease_id == B and changed.lease_id == B
    # Retried after it took effect: (A)->(B) on a lease that is B already succeeds.
    assert apply(changed.lease, LeaseRequest("change", lease_id=A, proposed_id=B), T0).lease_id == B
    with pytest.raises(errors.LeaseIdMismatchWithLeaseOperation):
        apply(leased(), LeaseRequest("change", lease_id=B, proposed_id=C), T0)
    with pytest.raises(errors.LeaseIsBreakingAndCannotBeChanged):
        apply(breaking(), LeaseRequest("change", lease_id=A, proposed_id=B), T0)
    for ended in (broken(), expired(), None):
        with pytest.raises(errors.LeaseNotPresentWithLeaseOperation):
            apply(ended, LeaseRequest("change", lease_id=A, proposed_id=B), T0)


@pytest.mark.parametrize("lease", [leased(), breaking(), broken(), expired()],
                         ids=["leased", "breaking", "broken", "expired"])
def test_release_with_the_id_frees_and_any_other_id_conflicts(lease):
    assert apply(lease, LeaseRequest("release", lease_id=A), T0).lease is None
    with pytest.raises(errors.LeaseIdMismatchWithLeaseOperation):
        apply(lease, LeaseRequest("release", lease_id=B), T0)


def test_release_without_a_lease():
    with pytest.raises(errors.LeaseIdMismatchWithLeaseOperation):
        apply(None, LeaseRequest("release", lease_id=A), T0)


def test_break_periods():
    now_broken = apply(leased(), LeaseRequest("break", break_period=0), T0)
    assert now_broken.lease.state == BROKEN and now_broken.lease_time == 0
    timed = apply(leased(), LeaseRequest("break", break_period=10), T0)
    assert timed.lease.effective_state(T0 + 9.9) == BREAKING and timed.lease_time == 10
    assert timed.lease.effective_state(T0 + 10) == BROKEN
    # A fixed lease breaks no later than it would have expired; no period = its remaining time.
    fixed = leased(duration=20)
    assert apply(fixed, LeaseRequest("break", break_period=60), T0 + 5).lease_time == 15
    assert apply(fixed, LeaseRequest("break"), T0 + 5).lease.break_at == T0 + 20
    assert apply(leased(), LeaseRequest("break"), T0).lease.state == BROKEN  # infinite, no period: at once
    # Breaking again may only shorten the period.
    again = apply(timed.lease, LeaseRequest("break", break_period=30), T0 + 1)
    assert again.lease.break_at == T0 + 10 and again.lease_time == 9
    assert apply(timed.lease, LeaseRequest("break", break_period=2), T0 + 1).lease.break_at == T0 + 3
    assert apply(broken(), LeaseRequest("break", break_period=5), T0).lease.state == BROKEN
    assert apply(expired(), LeaseRequest("break", break_period=5), T0).lease is None
    with pytest.raises(errors.LeaseNotPresentWithLeaseOperation):
        apply(None, LeaseRequest("break"), T0)


def test_views():
    assert view(None, T0) == leases.LeaseView("unlocked", "available", "")
    assert view(breaking(), T0) == leases.LeaseView("locked", BREAKING, "")
    assert view(broken(), T0) == leases.LeaseView("unlocked", BROKEN, "")
    assert view(expired(), T0) == leases.LeaseView("unlocked", EXPIRED, "")


def test_write_checks():
    leases.check_write(None, None, T0)
    leases.check_write(leased(), A.upper(), T0)  # lease ids are GUIDs: case does not matter
    leases.check_write(breaking(), A, T0)
    leases.check_write(broken(), None, T0)
    leases.check_write(expired(), None, T0)
    with pytest.raises(errors.LeaseIdMissing):
        leases.check_write(leased(), None, T0)
    with pytest.raises(errors.LeaseIdMissing):
        leases.check_write(breaking(), None, T0)
    with pytest.raises(errors.LeaseIdMismatchWithBlobOperation):
        leases.check_write(leased(), B, T0)
    with pytest.raises(errors.LeaseIdMismatchWithContainerOperation):
        leases.check_write(leased(), B, T0, container=True)
    for ended in (None, broken(), expired()):
        with pytest.raises(errors.LeaseNotPresentWithBlobOperation):
            leases.check_write(ended, A, T0)
    with pytest.raises(errors.LeaseNotPresentWithContainerOperation):
        leases.check_write(None, A, T0, container=True)


def test_errors_carry_azure_codes_and_are_access_denied_for_s3():
    from atoll.s3.errors import code_and_status

    missing = errors.LeaseIdMissing()
    assert missing.detail["code"] == "LeaseIdMissing"
    assert code_and_status(missing) == ("AccessDenied", 403)
    assert code_and_status(errors.LeaseAlreadyPresent())[1] == 409


@pytest.mark.parametrize("headers, code", [
    (dict(action=None), "MissingRequiredHeader"),
    (dict(action="grab"), "InvalidHeaderValue"),
    (dict(action="acquire"), "MissingRequiredHeader"),
    (dict(action="acquire", duration="14"), "InvalidHeaderValue"),
    (dict(action="acquire", duration="61"), "InvalidHeaderValue"),
    (dict(action="acquire", duration="ten"), "InvalidHeaderValue"),
    (dict(action="acquire", duration="-1", proposed_id="not-a-guid"), "InvalidHeaderValue"),
    (dict(action="renew"), "MissingRequiredHeader"),
    (dict(action="change", lease_id=A), "MissingRequiredHeader"),
    (dict(action="break", break_period="61"), "InvalidHeaderValue"),
    (dict(action="break", break_period="-1"), "InvalidHeaderValue"),
])
def test_bad_headers_are_refused_with_400_codes(headers, code):
    fields = dict(action=None, lease_id=None, proposed_id=None, duration=None, break_period=None) | headers
    action = fields.pop("action")
    with pytest.raises(errors.LeaseHeaderError) as caught:
        leases.parse_request(action, **fields)
    assert caught.value.detail["code"] == code


def test_parse_request_canonicalises_ids():
    parsed = leases.parse_request("Acquire", lease_id=None, proposed_id=A.upper(), duration="-1", break_period=None)
    assert parsed == LeaseRequest("acquire", None, A, INFINITE, None)
