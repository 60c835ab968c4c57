"""When to refresh a token and when to retry: pure functions of wall-clock time.

All times are Unix seconds. `jitter` arguments are numbers in [0, 1) drawn by
the caller, so that tests can pin them.

A token is refreshed at 80% of its own lifetime (`exp - iat`), moved earlier
by a random share of up to 10% of that lifetime so that pods started together
do not refresh together. Deadlines are wall-clock times checked on a short
tick rather than long sleeps: a monotonic sleep stops while a node is
suspended, and a resumed node would then hold an expired token until it ended.
"""

from __future__ import annotations

from typing import Final

REFRESH_AT_FRACTION: Final = 0.8
MAX_JITTER_FRACTION: Final = 0.1
"""Jitter only ever moves a refresh earlier, by at most this share of the
lifetime, so a token is always replaced with at least 20% of it left."""

MIN_REFRESH_INTERVAL_SECONDS: Final = 1.0
"""A fresh token is never refreshed sooner than this: an issuer whose clock
runs far behind ours could otherwise hand out tokens that are due at once."""

RETRY_BASE_SECONDS: Final = 1.0
MAX_RETRY_FRACTION: Final = 0.1
"""No retry waits longer than this share of the token lifetime."""

URGENT_RETRY_CAP_SECONDS: Final = 5.0
"""Cap while the file holds no valid token (none yet, or expired): the pod is
waiting for credentials, but every pod of a failed issuer retries at once."""


def lifetime(*, iat: float, exp: float) -> float:
    return max(exp - iat, 0.0)


def refresh_deadline(
    *, iat: float, exp: float, received_at: float, jitter: float
) -> float:
    """The wall-clock time at which to replace a token received at `received_at`.

    The lifetime is counted from `iat`, or from when the token arrived if that
    is earlier on our clock (an issuer whose clock runs ahead of this node's),
    so the refresh never comes later than 80% of the way to `exp`.
    """
    anchor = min(iat, received_at)
    fraction = REFRESH_AT_FRACTION - MAX_JITTER_FRACTION * _unit(jitter)
    deadline = anchor + lifetime(iat=iat, exp=exp) * fraction
    return max(deadline, received_at + MIN_REFRESH_INTERVAL_SECONDS)


def is_due(*, now: float, deadline: float, scheduled_at: float) -> bool:
    """Whether to act now on a deadline that was set at `scheduled_at`.

    A clock that reads earlier than when the deadline was set has been stepped
    back (an NTP correction). The deadline is then meaningless, and the token
    may carry an `iat` in the future: act at once.
    """
    return now >= deadline or now < scheduled_at


def retry_cap(*, lifetime: float, remaining: float | None) -> float:
    """The longest wait before the next retry.

    At most 10% of the lifetime; as expiry nears the cap shrinks to a quarter
    of the time left (never below the urgent cap), so the last attempts before
    the token expires come quickly. `remaining` is None without a token.
    """
    ceiling = MAX_RETRY_FRACTION * lifetime
    if remaining is None or remaining <= 0:
        return min(ceiling, URGENT_RETRY_CAP_SECONDS)
    return min(ceiling, max(URGENT_RETRY_CAP_SECONDS, remaining / 4))


def retry_delay(
    *, failures: int, lifetime: float, remaining: float | None, jitter: float
) -> float:
    """How long to wait after the `failures`-th failure in a row (from 1).

    Exponential from one second, capped by `retry_cap`, with "equal jitter":
    half of the delay is fixed and half is random, so pods that failed together
    spread out but none retries sooner than half the nominal delay.
    """
    exponent = min(max(failures, 1) - 1, 32)
    nominal = min(
        RETRY_BASE_SECONDS * 2.0**exponent,
        retry_cap(lifetime=lifetime, remaining=remaining),
    )
    return nominal * (0.5 + 0.5 * _unit(jitter))


def _unit(jitter: float) -> float:
    return min(max(jitter, 0.0), 1.0)
