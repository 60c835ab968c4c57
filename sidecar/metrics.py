"""The sidecar's Prometheus metrics, on a registry of its own.

Names follow docs/interfaces.md. Every label value is known at start (the
configured providers, the four failure reasons, the mode), so every series
exists from the first scrape and `rate()` and absence alerts work at once.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Final

from sidecar.prometheus import CollectorRegistry, Counter, Gauge, Histogram
from sidecar.tokens import REASONS

FETCH_BUCKETS: Final = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
"""Local signing takes about a millisecond; the issuer a round trip or more."""


class SidecarMetrics:
    def __init__(
        self, registry: CollectorRegistry, *, mode: str, providers: Sequence[str]
    ) -> None:
        self.refresh_attempts = Counter(
            "workload_identity_sidecar_refresh_attempts_total",
            "Attempts to obtain and write a token, successful or not.",
            ["provider"],
            registry=registry,
        )
        self.refresh_failures = Counter(
            "workload_identity_sidecar_refresh_failures_total",
            "Failed attempts, by reason: signing, issuer_unreachable, "
            "issuer_refused, write_failed.",
            ["provider", "reason"],
            registry=registry,
        )
        self.token_expiry = Gauge(
            "workload_identity_sidecar_token_expiry_timestamp_seconds",
            "The exp claim of the token now in the file (0: no token written).",
            ["provider"],
            registry=registry,
        )
        self.last_success = Gauge(
            "workload_identity_sidecar_last_success_timestamp_seconds",
            "Unix time of the last successful refresh (0: none yet).",
            ["provider"],
            registry=registry,
        )
        self.token_valid = Gauge(
            "workload_identity_sidecar_token_valid",
            "1 while the file holds an unexpired token, else 0.",
            ["provider"],
            registry=registry,
        )
        self.fetch_duration = Histogram(
            "workload_identity_sidecar_token_fetch_duration_seconds",
            "Time to sign a token (key mode) or get one from the issuer.",
            ["mode"],
            buckets=FETCH_BUCKETS,
            registry=registry,
        )
        self._mode = mode
        self.fetch_duration.labels(mode)
        for provider in providers:
            self.refresh_attempts.labels(provider)
            for reason in REASONS:
                self.refresh_failures.labels(provider, reason)
            self.token_expiry.labels(provider)
            self.last_success.labels(provider)
            self.token_valid.labels(provider)

    def watch_validity(self, provider: str, is_valid: Callable[[], bool]) -> None:
        """Compute the valid-token gauge at scrape time, so it drops to 0 at exp."""
        self.token_valid.labels(provider).set_function(
            lambda: 1.0 if is_valid() else 0.0
        )

    def observe_fetch(self, seconds: float) -> None:
        self.fetch_duration.labels(self._mode).observe(seconds)
