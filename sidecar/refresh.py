"""The refresh loop: obtain, write and replace each provider's token in time.

Each provider has its own state and schedule, so a failure for one never holds
up the other. On failure the file keeps the last good token, and the next
attempt follows a capped, jittered backoff (`sidecar.schedule`).

State lives on the event loop thread only: the loop and the probe handlers
run on the same loop and never interleave inside a method, so no lock is
needed.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from oidc_tokens.claims import MalformedTokenError
from sidecar import files, schedule
from sidecar.clock import Clock
from sidecar.config import ProviderConfig
from sidecar.metrics import SidecarMetrics
from sidecar.tokens import RefreshError, Token, TokenSource

log = logging.getLogger(__name__)

_SYSTEM_RANDOM: Final = random.SystemRandom()

ONESHOT_ATTEMPTS: Final = 5
"""With the urgent retry cap this gives up after roughly 10 s."""


@dataclass
class ProviderState:
    """What the sidecar knows about one provider and its files."""

    config: ProviderConfig
    token: Token | None = None
    """The token now in the file, as far as this process knows."""
    received_at: float = 0.0
    next_attempt: float = 0.0
    """Wall-clock deadline of the next attempt (a refresh or a retry)."""
    scheduled_at: float = 0.0
    """Wall-clock time at which `next_attempt` was set."""
    failures: int = 0
    """Failed attempts since the last success."""
    last_error: RefreshError | None = None
    companions_written: bool = False

    @property
    def provider(self) -> str:
        return self.config.provider

    def is_due(self, now: float) -> bool:
        return schedule.is_due(
            now=now, deadline=self.next_attempt, scheduled_at=self.scheduled_at
        )

    def holds_valid_token(self, now: float) -> bool:
        return self.token is not None and self.token.expires_at > now

    def lifetime(self) -> float:
        """How long the token was good for when it arrived: retries are a share
        of it. Shorter than `exp - iat`, which includes the backdated clock skew;
        for a token from an earlier run, which arrived unseen, `exp - iat`.
        """
        if self.token is None:
            return float(self.config.expiration_seconds)
        arrived = max(self.received_at, self.token.issued_at)
        return max(self.token.expires_at - arrived, 0.0)


class Refresher:
    """Keeps every configured provider's files holding a fresh token."""

    def __init__(
        self,
        *,
        providers: Sequence[ProviderConfig],
        source: TokenSource,
        metrics: SidecarMetrics,
        clock: Clock,
        file_mode: int,
        tick_seconds: float,
        jitter: Callable[[], float] = _SYSTEM_RANDOM.random,
    ) -> None:
        self.states = [ProviderState(config) for config in providers]
        self._source = source
        self._metrics = metrics
        self._clock = clock
        self._file_mode = file_mode
        self._tick_seconds = tick_seconds
        self._jitter = jitter
        self.last_progress = clock.monotonic()
        """Monotonic time of the last completed tick: what liveness checks."""
        for state in self.states:
            metrics.watch_validity(state.provider, self._validity_of(state))

    def _validity_of(self, state: ProviderState) -> Callable[[], bool]:
        return lambda: state.holds_valid_token(self._clock.wall())

    def adopt_files_on_disk(self) -> None:
        """Take over the tokens an earlier run left in the volume.

        A restarted sidecar then reports what the files really hold while it
        obtains fresh tokens, which it still does at once.
        """
        for state in self.states:
            text = files.read_text(state.config.token_path)
            if not text:
                continue
            try:
                state.token = Token.parse(text)
            except MalformedTokenError:
                continue
            state.received_at = state.token.issued_at
            self._metrics.token_expiry.labels(state.provider).set(
                state.token.expires_at
            )
            log.info(
                "found a %s token from an earlier run that expires at %s",
                state.provider,
                _when(state.token.expires_at),
            )

    async def run(self) -> None:
        """Check the deadlines every tick, forever (until cancelled)."""
        log.info(
            "refreshing %s tokens with %s mode, checking every %g s",
            ", ".join(state.provider for state in self.states),
            self._source.mode,
            self._tick_seconds,
        )
        while True:
            await self.refresh_due()
            self.last_progress = self._clock.monotonic()
            await self._clock.sleep(self._tick_seconds)

    async def refresh_due(self) -> None:
        """One tick: refresh every provider whose deadline has passed."""
        now = self._clock.wall()
        due = [state for state in self.states if state.is_due(now)]
        if not due:
            return
        async with asyncio.TaskGroup() as group:
            for state in due:
                group.create_task(self.refresh(state))

    async def first_tokens(
        self, *, attempts: int = ONESHOT_ATTEMPTS
    ) -> list[ProviderState]:
        """Write a fresh token for every provider; return those that failed."""
        pending = list(self.states)
        for attempt in range(1, attempts + 1):
            async with asyncio.TaskGroup() as group:
                tasks = [group.create_task(self.refresh(state)) for state in pending]
            pending = [
                state
                for state, task in zip(pending, tasks, strict=True)
                if not task.result()
            ]
            if not pending or attempt == attempts:
                break
            wait = min(state.next_attempt for state in pending) - self._clock.wall()
            await self._clock.sleep(max(wait, 0.0))
        return pending

    async def refresh(self, state: ProviderState) -> bool:
        """One attempt for one provider; True when its files now hold a new token."""
        now = self._clock.wall()
        self._metrics.refresh_attempts.labels(state.provider).inc()
        log.debug(
            "requesting the %s token for identity %s (attempt %d)",
            state.provider,
            state.config.identity,
            state.failures + 1,
        )
        try:
            token = await self._fetch(state, now=now)
            self._write(state, token)
        except RefreshError as error:
            self._failed(state, error, now=now)
            return False
        self._succeeded(state, token, now=now)
        return True

    async def _fetch(self, state: ProviderState, *, now: float) -> Token:
        started = time.perf_counter()
        try:
            return await self._source.fetch(state.config, now=now)
        finally:
            self._metrics.observe_fetch(time.perf_counter() - started)

    def _write(self, state: ProviderState, token: Token) -> None:
        target: Path = state.config.token_path
        try:
            if not state.companions_written:
                for companion in state.config.companion_files:
                    target = companion.path
                    files.write_atomically(
                        companion.path, companion.content, mode=self._file_mode
                    )
                state.companions_written = True
            target = state.config.token_path
            files.write_atomically(target, token.value.encode(), mode=self._file_mode)
        except OSError as exc:
            raise RefreshError(
                "write_failed",
                f"cannot write {target} ({exc.strerror or exc}); the token volume "
                "(--token-dir / WI_TOKEN_DIR) must be writable and have room",
            ) from exc

    def _succeeded(self, state: ProviderState, token: Token, *, now: float) -> None:
        recovered_from = state.failures
        state.token = token
        state.received_at = now
        state.failures = 0
        state.last_error = None
        state.scheduled_at = now
        state.next_attempt = schedule.refresh_deadline(
            iat=token.issued_at,
            exp=token.expires_at,
            received_at=now,
            jitter=self._jitter(),
        )
        self._metrics.token_expiry.labels(state.provider).set(token.expires_at)
        self._metrics.last_success.labels(state.provider).set(now)
        log.info(
            "wrote the %s token for identity %s%s: expires at %s, next refresh at %s",
            state.provider,
            state.config.identity,
            f" after {recovered_from} failed attempts" if recovered_from else "",
            _when(token.expires_at),
            _when(state.next_attempt),
        )

    def _failed(self, state: ProviderState, error: RefreshError, *, now: float) -> None:
        previous = state.last_error
        state.failures += 1
        state.last_error = error
        token = state.token
        delay = schedule.retry_delay(
            failures=state.failures,
            lifetime=state.lifetime(),
            remaining=token.expires_at - now if token else None,
            jitter=self._jitter(),
        )
        state.scheduled_at = now
        state.next_attempt = now + delay
        self._metrics.refresh_failures.labels(state.provider, error.reason).inc()
        if token is None:
            kept = "no token written yet"
        elif token.expires_at > now:
            kept = (
                f"keeping the current token, which expires at {_when(token.expires_at)}"
            )
        else:
            kept = f"the token in the file expired at {_when(token.expires_at)}"
        # Warn when a failure starts or changes; repeats go to debug.
        repeated = previous is not None and str(previous) == str(error)
        log.log(
            logging.DEBUG if repeated else logging.WARNING,
            "%s token refresh for identity %s failed (%s): %s; %s; retrying in %.1f s",
            state.provider,
            state.config.identity,
            error.reason,
            error,
            kept,
            delay,
        )


def _when(timestamp: float) -> str:
    """ISO 8601 in UTC, to the second."""
    return time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(timestamp))
