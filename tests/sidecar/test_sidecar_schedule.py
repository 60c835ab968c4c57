"""Refresh and retry timing, as pure functions of wall-clock time."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from oidc_tokens.claims import CLOCK_SKEW_SECONDS
from sidecar import schedule

S = 1_800_000_000
lifetimes = st.integers(min_value=10, max_value=86_400)
jitters = st.floats(min_value=0.0, max_value=1.0, exclude_max=True)


def key_mode_token(signed_at: int, lifetime: int) -> tuple[int, int]:
    """(iat, exp) of a token the sidecar signs at `signed_at`."""
    return signed_at - CLOCK_SKEW_SECONDS, signed_at + lifetime


def test_refresh_comes_at_80_percent_of_the_tokens_own_lifetime() -> None:
    iat, exp = key_mode_token(S, 3600)
    deadline = schedule.refresh_deadline(iat=iat, exp=exp, received_at=S, jitter=0.0)
    assert deadline == pytest.approx(iat + 0.8 * (exp - iat))
    assert exp - deadline == pytest.approx(0.2 * 3630)


@settings(database=None)
@given(lifetime=lifetimes, jitter=jitters)
def test_jitter_only_ever_moves_the_refresh_earlier(
    lifetime: int, jitter: float
) -> None:
    iat, exp = key_mode_token(S, lifetime)
    span = exp - iat
    unjittered = schedule.refresh_deadline(iat=iat, exp=exp, received_at=S, jitter=0)
    deadline = schedule.refresh_deadline(iat=iat, exp=exp, received_at=S, jitter=jitter)
    assert deadline <= unjittered
    assert deadline >= min(iat + 0.7 * span, unjittered) - 1e-6
    # at least 20% of the lifetime is left when the token is replaced
    assert exp - unjittered >= 0.2 * span - 1e-6


@settings(database=None)
@given(lifetime=lifetimes)
def test_jitter_scales_with_the_lifetime(lifetime: int) -> None:
    iat, exp = key_mode_token(S, lifetime)
    earliest = schedule.refresh_deadline(iat=iat, exp=exp, received_at=S, jitter=0.999)
    latest = schedule.refresh_deadline(iat=iat, exp=exp, received_at=S, jitter=0.0)
    assert latest - earliest <= 0.1 * (exp - iat) + 1e-6
    if lifetime >= 100:
        assert latest - earliest == pytest.approx(0.0999 * (exp - iat))


def test_a_60_second_token_is_replaced_with_more_than_20_percent_left() -> None:
    iat, exp = key_mode_token(S, 60)
    for jitter in (0.0, 0.5, 0.999):
        deadline = schedule.refresh_deadline(
            iat=iat, exp=exp, received_at=S, jitter=jitter
        )
        assert exp - deadline >= 0.2 * 60 - 1


def test_a_token_from_an_issuer_whose_clock_runs_ahead_is_scheduled_from_arrival() -> (
    None
):
    # The issuer's clock is 10 minutes ahead: iat lies after our receipt time.
    received_at = S
    iat, exp = S + 600, S + 600 + 3600
    deadline = schedule.refresh_deadline(
        iat=iat, exp=exp, received_at=received_at, jitter=0.0
    )
    assert deadline == pytest.approx(received_at + 0.8 * 3600)
    assert not schedule.is_due(now=S + 1, deadline=deadline, scheduled_at=received_at)


def test_a_fresh_token_is_never_due_within_a_second_of_arrival() -> None:
    # An issuer whose clock runs far behind: by our clock the token is old.
    deadline = schedule.refresh_deadline(
        iat=S - 5000, exp=S - 5000 + 3600 + 1500, received_at=S, jitter=0.0
    )
    assert deadline == S + schedule.MIN_REFRESH_INTERVAL_SECONDS


def test_nothing_is_due_before_the_deadline() -> None:
    assert not schedule.is_due(now=S + 10, deadline=S + 100, scheduled_at=S)


def test_the_deadline_itself_is_due() -> None:
    assert schedule.is_due(now=S + 100, deadline=S + 100, scheduled_at=S)


def test_a_clock_stepped_back_before_iat_makes_the_refresh_due_at_once() -> None:
    iat, exp = key_mode_token(S, 3600)
    deadline = schedule.refresh_deadline(iat=iat, exp=exp, received_at=S, jitter=0)
    assert schedule.is_due(now=iat - 1, deadline=deadline, scheduled_at=S)
    assert schedule.is_due(now=S - 600, deadline=deadline, scheduled_at=S)


def test_a_forward_jump_past_the_deadline_is_due_at_once() -> None:
    iat, exp = key_mode_token(S, 3600)
    deadline = schedule.refresh_deadline(iat=iat, exp=exp, received_at=S, jitter=0)
    assert schedule.is_due(now=S + 7200, deadline=deadline, scheduled_at=S)


@settings(database=None)
@given(
    failures=st.integers(min_value=1, max_value=200),
    lifetime=st.integers(min_value=10, max_value=86_430),
    remaining=st.one_of(st.none(), st.floats(min_value=-1e6, max_value=1e6)),
    jitter=jitters,
)
def test_a_retry_never_waits_longer_than_10_percent_of_the_lifetime(
    failures: int, lifetime: int, remaining: float | None, jitter: float
) -> None:
    delay = schedule.retry_delay(
        failures=failures, lifetime=lifetime, remaining=remaining, jitter=jitter
    )
    assert 0 < delay <= 0.1 * lifetime


def test_retries_back_off_exponentially_up_to_the_cap() -> None:
    delays = [
        schedule.retry_delay(failures=n, lifetime=3630, remaining=3000, jitter=0.999999)
        for n in range(1, 12)
    ]
    assert delays[:5] == pytest.approx([1, 2, 4, 8, 16], rel=1e-5)
    assert max(delays) == pytest.approx(0.1 * 3630, rel=1e-5)
    assert delays == sorted(delays)


def test_retry_jitter_keeps_at_least_half_of_the_nominal_delay() -> None:
    low = schedule.retry_delay(failures=4, lifetime=3630, remaining=3000, jitter=0.0)
    high = schedule.retry_delay(failures=4, lifetime=3630, remaining=3000, jitter=0.99)
    assert low == pytest.approx(4.0)
    assert 7.9 < high <= 8.0


def test_the_retry_cap_shrinks_as_expiry_nears() -> None:
    caps = [
        schedule.retry_cap(lifetime=3630, remaining=remaining)
        for remaining in (3000, 1000, 400, 100, 20, 1)
    ]
    assert caps == sorted(caps, reverse=True)
    assert caps[0] == pytest.approx(363.0)
    assert caps[-1] == schedule.URGENT_RETRY_CAP_SECONDS


def test_without_a_valid_token_retries_come_within_the_urgent_cap() -> None:
    for remaining in (None, 0.0, -50.0):
        assert schedule.retry_cap(lifetime=3630, remaining=remaining) == 5.0
    # ... but a very short lifetime still bounds it
    assert schedule.retry_cap(lifetime=20, remaining=None) == 2.0
