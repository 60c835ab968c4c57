"""/readyz, /healthz and /metrics through aiohttp's test client, and the runtime."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from sidecar import runtime
from sidecar.config import Config
from sidecar.server import ProbeSettings, create_app
from tests.sidecar.sidecar_helpers import (
    GCP_AUDIENCE,
    REPO_ROOT,
    Harness,
    break_key,
    free_port,
)

MakeHarness = Callable[..., Harness]
STALL_AFTER = 20.0


@pytest.fixture
def probe_client(aiohttp_client: Any) -> Callable[..., Any]:
    async def make(harness: Harness, *, margin: float = 5.0) -> Any:
        app = create_app(
            refresher=harness.refresher,
            registry=harness.registry,
            clock=harness.clock,
            settings=ProbeSettings(
                ready_margin_seconds=margin, stall_after_seconds=STALL_AFTER
            ),
        )
        return await aiohttp_client(app)

    return make


async def get(client: Any, path: str) -> tuple[int, Any]:
    response = await client.get(path)
    if response.content_type == "application/json":
        return response.status, await response.json()
    return response.status, await response.text()


async def test_readyz_fails_until_every_file_holds_a_valid_token(
    make_config: Callable[..., Config],
    make_harness: MakeHarness,
    probe_client: Callable[..., Any],
) -> None:
    config = make_config(gcp_identity="bq-reader", gcp_audience=GCP_AUDIENCE)
    harness = make_harness(config)
    client = await probe_client(harness)

    status, body = await get(client, "/readyz")
    assert status == 503
    assert body["ready"] is False
    assert set(body["files"]) == {"aws-token", "gcp-token", "gcp-credentials.json"}
    assert body["files"]["aws-token"]["status"] == "no token yet"

    await harness.refresher.refresh(harness.state("gcp"))
    status, body = await get(client, "/readyz")
    assert status == 503
    assert body["files"]["gcp-token"]["ok"] is True
    assert body["files"]["gcp-credentials.json"]["ok"] is True
    assert body["files"]["aws-token"]["ok"] is False

    await harness.tick(0)
    status, body = await get(client, "/readyz")
    assert status == 200
    assert body["ready"] is True
    aws_token = (config.token_dir / "aws-token").read_text()
    assert aws_token not in str(body)


async def test_readyz_fails_once_a_token_is_within_the_margin_of_expiry(
    make_config: Callable[..., Config],
    make_harness: MakeHarness,
    probe_client: Callable[..., Any],
) -> None:
    harness = make_harness(make_config())
    client = await probe_client(harness, margin=5)
    await harness.tick(0)
    token = harness.state().token
    assert token is not None

    harness.clock.now = token.expires_at - 5.5
    assert (await get(client, "/readyz"))[0] == 200
    harness.clock.now = token.expires_at - 5
    status, body = await get(client, "/readyz")
    assert status == 503
    assert body["files"]["aws-token"]["status"] == "expires within 5 s"


async def test_healthz_fails_when_the_loop_stops_making_progress(
    make_config: Callable[..., Config],
    make_harness: MakeHarness,
    probe_client: Callable[..., Any],
) -> None:
    harness = make_harness(make_config())
    client = await probe_client(harness)
    assert (await get(client, "/healthz"))[0] == 200
    harness.clock.mono += STALL_AFTER + 1
    status, body = await get(client, "/healthz")
    assert status == 503
    assert "no progress" in body["problems"][0]


async def test_healthz_and_the_valid_gauge_report_an_expired_token(
    make_config: Callable[..., Config],
    make_harness: MakeHarness,
    probe_client: Callable[..., Any],
    key_file: Path,
) -> None:
    harness = make_harness(make_config())
    client = await probe_client(harness)
    await harness.tick(0)
    token = harness.state().token
    assert token is not None
    break_key(key_file)  # every refresh fails from now on

    harness.clock.now = token.expires_at - 1
    await harness.refresher.refresh_due()
    harness.refresher.last_progress = harness.clock.mono
    assert (await get(client, "/healthz"))[0] == 200
    assert harness.sample("token_valid", provider="aws") == 1

    harness.clock.now = token.expires_at
    assert harness.sample("token_valid", provider="aws") == 0
    status, body = await get(client, "/healthz")
    assert status == 503
    assert body["problems"] == ["the aws token in the file has expired"]
    status, body = await get(client, "/readyz")
    assert body["files"]["aws-token"]["status"] == "expired"
    assert body["files"]["aws-token"]["lastFailure"] == "signing"


def documented_sidecar_metrics() -> list[str]:
    text = (REPO_ROOT / "docs" / "interfaces.md").read_text()
    section = text.split("Sidecar (own registry")[1].split("Webhook (metrics port")[0]
    return re.findall(r"`(workload_identity_sidecar_[a-z_]+)", section)


async def test_metrics_serves_every_documented_series_from_the_own_registry(
    make_config: Callable[..., Config],
    make_harness: MakeHarness,
    probe_client: Callable[..., Any],
) -> None:
    harness = make_harness(make_config())
    client = await probe_client(harness)
    await harness.tick(0)
    response = await client.get("/metrics")
    assert response.status == 200
    assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    text = await response.text()
    names = documented_sidecar_metrics()
    assert len(names) == 6
    for name in names:
        kind = "histogram" if name.endswith("_duration_seconds") else r"\w+"
        assert re.search(rf"^# TYPE {name} {kind}$", text, re.MULTILINE), name
    assert (
        'workload_identity_sidecar_refresh_failures_total{provider="aws",'
        'reason="issuer_unreachable"} 0.0' in text
    )
    assert (
        'workload_identity_sidecar_token_fetch_duration_seconds_count{mode="key"} 1.0'
        in text
    )
    assert 'workload_identity_sidecar_token_valid{provider="aws"} 1.0' in text
    # nothing from the process-wide default registry
    assert "process_cpu_seconds_total" not in text
    assert "python_gc" not in text


async def test_metrics_speaks_openmetrics_when_asked(
    make_config: Callable[..., Config],
    make_harness: MakeHarness,
    probe_client: Callable[..., Any],
) -> None:
    client = await probe_client(make_harness(make_config()))
    response = await client.get(
        "/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"}
    )
    assert response.headers["Content-Type"].startswith("application/openmetrics-text")
    assert (await response.text()).endswith("# EOF\n")


async def test_the_runtime_serves_probes_until_asked_to_stop(
    make_config: Callable[..., Config],
) -> None:
    port = free_port()
    config = make_config(listen=f"127.0.0.1:{port}", tick_seconds="0.1")
    stop = asyncio.Event()
    task = asyncio.create_task(
        runtime.run_until_stopped(config, stop=stop, handle_signals=False)
    )
    statuses: list[int] = []
    async with aiohttp.ClientSession() as session:
        for _ in range(100):
            try:
                async with session.get(f"http://127.0.0.1:{port}/readyz") as response:
                    statuses.append(response.status)
            except aiohttp.ClientConnectionError:
                pass
            if statuses and statuses[-1] == 200:
                break
            await asyncio.sleep(0.05)
        assert statuses[-1] == 200
        async with session.get(f"http://127.0.0.1:{port}/healthz") as response:
            assert response.status == 200
    stopped_at = time.monotonic()
    stop.set()
    assert await asyncio.wait_for(task, 5) == 0
    assert time.monotonic() - stopped_at < 2
    assert (config.token_dir / "aws-token").exists()
