"""The webhook's Prometheus metrics, on a registry of their own."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# Admission answers take tens of microseconds to a few milliseconds, so the
# buckets start at 100 µs; the API server's timeout (5 s) caps the top.
_ADMISSION_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class WebhookMetrics:
    registry: CollectorRegistry
    admission_requests: Counter
    admission_duration: Histogram
    identities_loaded: Gauge
    identities_invalid: Gauge
    cache_synced: Gauge
    watch_restarts: Counter
    namespace_cache_misses: Counter
    tokens_issued: Counter
    token_sign_duration: Histogram
    drift_pods: Gauge
    drift_leader: Gauge


def create_metrics(registry: CollectorRegistry | None = None) -> WebhookMetrics:
    registry = registry or CollectorRegistry()
    metrics = WebhookMetrics(
        registry=registry,
        admission_requests=Counter(
            "workload_identity_admission_requests",
            "AdmissionReviews answered, by outcome; dry_run separates server-side dry runs.",
            ["outcome", "dry_run"],
            registry=registry,
        ),
        admission_duration=Histogram(
            "workload_identity_admission_duration_seconds",
            "Time from request body read to response ready.",
            buckets=_ADMISSION_BUCKETS,
            registry=registry,
        ),
        identities_loaded=Gauge(
            "workload_identity_identities_loaded",
            "Valid WorkloadIdentities in the cache, by provider.",
            ["provider"],
            registry=registry,
        ),
        identities_invalid=Gauge(
            "workload_identity_identities_invalid",
            "WorkloadIdentities rejected by validation and skipped.",
            registry=registry,
        ),
        cache_synced=Gauge(
            "workload_identity_cache_synced",
            "1 once the cache of the resource is synced and its watch is healthy.",
            ["resource"],
            registry=registry,
        ),
        watch_restarts=Counter(
            "workload_identity_watch_restarts",
            "Watch streams restarted, by resource and reason.",
            ["resource", "reason"],
            registry=registry,
        ),
        namespace_cache_misses=Counter(
            "workload_identity_namespace_cache_misses",
            "Admissions whose namespace was not cached and was read directly.",
            registry=registry,
        ),
        tokens_issued=Counter(
            "workload_identity_tokens_issued",
            "Tokens requested at /token, by provider and outcome.",
            ["provider", "outcome"],
            registry=registry,
        ),
        token_sign_duration=Histogram(
            "workload_identity_token_sign_duration_seconds",
            "Time to sign one token at /token.",
            buckets=_ADMISSION_BUCKETS,
            registry=registry,
        ),
        drift_pods=Gauge(
            "workload_identity_drift_pods",
            "Running pods whose identity differs from what the rules give them now, "
            "by kind (missing, stale, orphaned) and identity; exported by the "
            "replica that holds the drift lease only.",
            ["kind", "identity"],
            registry=registry,
        ),
        drift_leader=Gauge(
            "workload_identity_drift_leader",
            "1 while this replica holds the drift lease and reports drift.",
            registry=registry,
        ),
    )
    # Every outcome exists from the start, so rates read 0 rather than "no
    # data" on a replica that has not answered yet.
    for outcome in ("mutated", "unchanged", "ignored", "refused", "error"):
        for dry_run in ("true", "false"):
            metrics.admission_requests.labels(outcome, dry_run)
    return metrics
