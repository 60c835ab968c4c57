"""/readyz, /healthz and /metrics: the answers, the HTTP/1.1 server that
carries them, and the runtime that runs it beside the refresh loop."""

from __future__ import annotations

import asyncio
import itertools
import re
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, Counter, Enum, Gauge, Info, Summary
from prometheus_client.exposition import generate_latest

from sidecar import prometheus, runtime
from sidecar.config import Config
from sidecar.server import Probes, ProbeSettings, serving
from tests.sidecar.sidecar_helpers import (
    GCP_AUDIENCE,
    REPO_ROOT,
    Harness,
    RawResponse,
    break_key,
    exchange,
    free_port,
    get,
    parse_response,
)
from tests.streams import close_stream

MakeHarness = Callable[..., Harness]
STALL_AFTER = 20.0


def probes_for(harness: Harness, *, margin: float = 5.0) -> Probes:
    return Probes(
        refresher=harness.refresher,
        registry=harness.registry,
        clock=harness.clock,
        settings=ProbeSettings(
            ready_margin_seconds=margin, stall_after_seconds=STALL_AFTER
        ),
    )


@asynccontextmanager
async def served(
    harness: Harness, *, margin: float = 5.0, **limits: float
) -> AsyncIterator[int]:
    """The probe server for `harness` on a free port of 127.0.0.1."""
    async with serving(
        probes_for(harness, margin=margin), host="127.0.0.1", port=0, **limits
    ) as port:
        yield port


# --- what each path answers ---------------------------------------------------


async def test_readyz_fails_until_every_file_holds_a_valid_token(
    make_config: Callable[..., Config], make_harness: MakeHarness
) -> None:
    config = make_config(gcp_identity="bq-reader", gcp_audience=GCP_AUDIENCE)
    harness = make_harness(config)
    async with served(harness) as port:
        response = await get(port, "/readyz")
        assert response.status == 503
        body = response.json()
        assert body["ready"] is False
        assert set(body["files"]) == {"aws-token", "gcp-token", "gcp-credentials.json"}
        assert body["files"]["aws-token"]["status"] == "no token yet"

        await harness.refresher.refresh(harness.state("gcp"))
        response = await get(port, "/readyz")
        assert response.status == 503
        body = response.json()
        assert body["files"]["gcp-token"]["ok"] is True
        assert body["files"]["gcp-credentials.json"]["ok"] is True
        assert body["files"]["aws-token"]["ok"] is False

        await harness.tick(0)
        response = await get(port, "/readyz")
        assert response.status == 200
        assert response.json()["ready"] is True
        aws_token = (config.token_dir / "aws-token").read_text()
        assert aws_token not in response.body.decode()


async def test_readyz_fails_once_a_token_is_within_the_margin_of_expiry(
    make_config: Callable[..., Config], make_harness: MakeHarness
) -> None:
    harness = make_harness(make_config())
    await harness.tick(0)
    token = harness.state().token
    assert token is not None
    async with served(harness, margin=5) as port:
        harness.clock.now = token.expires_at - 5.5
        assert (await get(port, "/readyz")).status == 200
        harness.clock.now = token.expires_at - 5
        response = await get(port, "/readyz")
    assert response.status == 503
    assert response.json()["files"]["aws-token"]["status"] == "expires within 5 s"


async def test_healthz_fails_when_the_loop_stops_making_progress(
    make_config: Callable[..., Config], make_harness: MakeHarness
) -> None:
    harness = make_harness(make_config())
    async with served(harness) as port:
        assert (await get(port, "/healthz")).status == 200
        harness.clock.mono += STALL_AFTER + 1
        response = await get(port, "/healthz")
    assert response.status == 503
    assert "no progress" in response.json()["problems"][0]


async def test_healthz_and_the_valid_gauge_report_an_expired_token(
    make_config: Callable[..., Config], make_harness: MakeHarness, key_file: Path
) -> None:
    harness = make_harness(make_config())
    await harness.tick(0)
    token = harness.state().token
    assert token is not None
    break_key(key_file)  # every refresh fails from now on
    async with served(harness) as port:
        harness.clock.now = token.expires_at - 1
        await harness.refresher.refresh_due()
        harness.refresher.last_progress = harness.clock.mono
        assert (await get(port, "/healthz")).status == 200
        assert harness.sample("token_valid", provider="aws") == 1

        harness.clock.now = token.expires_at
        assert harness.sample("token_valid", provider="aws") == 0
        response = await get(port, "/healthz")
        assert response.status == 503
        assert response.json()["problems"] == ["the aws token in the file has expired"]
        body = (await get(port, "/readyz")).json()
    assert body["files"]["aws-token"]["status"] == "expired"
    assert body["files"]["aws-token"]["lastFailure"] == "signing"


def test_unknown_paths_are_404_and_other_methods_405(
    make_config: Callable[..., Config], make_harness: MakeHarness
) -> None:
    probes = probes_for(make_harness(make_config()))
    assert probes.answer("GET", "/", {}).status == 404
    assert probes.answer("GET", "/readyz/", {}).status == 404
    assert probes.answer("POST", "/nowhere", {}).status == 404
    for method in ("POST", "HEAD", "PUT", "DELETE", "OPTIONS", "get"):
        reply = probes.answer(method, "/metrics", {})
        assert reply.status == 405, method
        assert ("Allow", "GET") in reply.headers
    assert probes.answer("GET", "/healthz?verbose=1", {}).status == 200


def documented_sidecar_metrics() -> list[str]:
    text = (REPO_ROOT / "docs" / "interfaces.md").read_text()
    section = text.split("Sidecar (own registry")[1].split("Webhook (metrics port")[0]
    return re.findall(r"`(workload_identity_sidecar_[a-z_]+)", section)


async def test_metrics_serves_every_documented_series_from_the_own_registry(
    make_config: Callable[..., Config], make_harness: MakeHarness
) -> None:
    harness = make_harness(make_config())
    await harness.tick(0)
    async with served(harness) as port:
        response = await get(port, "/metrics")
    assert response.status == 200
    assert (
        response.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    )
    text = response.body.decode()
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


@pytest.mark.parametrize(
    "accept",
    [
        "application/openmetrics-text; version=1.0.0",
        # what Prometheus 2.x and 3.x send
        "application/openmetrics-text;version=1.0.0,application/openmetrics-text;"
        "version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1",
        "text/plain;version=1.0.0;escaping=allow-utf-8;q=0.2,"
        "application/openmetrics-text;version=1.0.0;escaping=allow-utf-8;q=0.6",
    ],
)
async def test_metrics_speaks_openmetrics_when_asked(
    make_config: Callable[..., Config], make_harness: MakeHarness, accept: str
) -> None:
    harness = make_harness(make_config())
    async with served(harness) as port:
        response = await get(port, "/metrics", headers={"Accept": accept})
    assert response.headers["content-type"].startswith("application/openmetrics-text")
    assert response.body.decode().endswith("# EOF\n")


def sidecar_registry_in_every_state(harness: Harness) -> CollectorRegistry:
    """The sidecar's own registry after successes and failures, plus every
    other kind of metric, with label values that need escaping."""
    registry = harness.registry
    odd = 'a "quoted"\\ value\nwith a newline and ünïcode'
    Counter("odd_total", 'help with \\ and\n"quotes"', ["v"], registry=registry).labels(
        odd
    ).inc(3)
    Gauge("plain", "no labels", registry=registry).set(1e21)
    Gauge("tiny", "small and negative", registry=registry).set(-1.5e-7)
    Summary("lat_seconds", "summary", registry=registry).observe(0.25)
    Info("build", "info", registry=registry).info({"version": odd})
    Enum("phase", "enum", states=["a", "b"], registry=registry).state("b")
    return registry


async def test_the_text_format_is_byte_for_byte_what_prometheus_client_writes(
    make_config: Callable[..., Config], make_harness: MakeHarness, key_file: Path
) -> None:
    config = make_config(gcp_identity="bq-reader", gcp_audience=GCP_AUDIENCE)
    harness = make_harness(config)
    await harness.tick()
    break_key(key_file)
    harness.clock.now = harness.state().next_attempt
    await harness.tick()
    registry = sidecar_registry_in_every_state(harness)
    assert prometheus.text_exposition(registry) == generate_latest(registry)


def test_importing_the_metrics_leaves_prometheus_client_whole_for_others() -> None:
    """The sidecar loads only the parts it uses; the first use of anything
    else from the package loads the rest, as a plain import would."""
    script = """
import sys
import sidecar.metrics
heavy = {"prometheus_client.exposition", "http.server", "wsgiref", "urllib.request"}
assert not heavy & set(sys.modules), heavy & set(sys.modules)
from prometheus_client import CollectorRegistry, Counter, generate_latest
import prometheus_client
assert prometheus_client.exposition.generate_latest is generate_latest
registry = CollectorRegistry()
Counter("c_total", "c", registry=registry).inc()
assert b"c_total 1.0" in generate_latest(registry)
print("ok")
"""
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.stdout.strip() == "ok", result.stderr


# --- the HTTP/1.1 transport -----------------------------------------------------


async def test_every_answer_has_its_length_type_and_closes_the_connection(
    make_config: Callable[..., Config], make_harness: MakeHarness
) -> None:
    harness = make_harness(make_config())
    await harness.tick(0)
    async with served(harness) as port:
        for path, status, content_type in [
            ("/readyz", 200, "application/json"),
            ("/healthz", 200, "application/json"),
            ("/metrics", 200, "text/plain; version=0.0.4; charset=utf-8"),
            ("/nowhere", 404, "text/plain; charset=utf-8"),
        ]:
            # `exchange` reads until the server closes: it returns at all only
            # because the server closes after one answer.
            raw = await exchange(
                port,
                f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: keep-alive\r\n\r\n".encode(),
            )
            response = parse_response(raw)
            assert response.status == status, path
            assert response.headers["content-type"] == content_type
            assert response.headers["content-length"] == str(len(response.body))
            assert response.headers["connection"] == "close"
        response = parse_response(
            await exchange(port, b"POST /readyz HTTP/1.0\r\nContent-Length: 0\r\n\r\n")
        )
    assert response.status == 405
    assert response.headers["allow"] == "GET"


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n", 400),  # TLS hello
        (b"GET /readyz\r\n\r\n", 400),
        (b"GET readyz HTTP/1.1\r\n\r\n", 400),
        (b"GET  /readyz HTTP/1.1\r\n\r\n", 400),
        (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 400),
        (b"GET /readyz HTTP/2.0\r\n\r\n", 505),
        (b"GET /readyz HTTP/1.1\r\nHost : x\r\n\r\n", 400),
        (b"GET /readyz HTTP/1.1\r\nHost: x\r\n folded\r\n\r\n", 400),
        (b"GET /readyz HTTP/1.1\r\nno colon\r\n\r\n", 400),
        (b"GET /readyz HTTP/1.1\r\n" + b"X-A: b\r\n" * 65 + b"\r\n", 431),
        (b"GET /readyz HTTP/1.1\r\nX: " + b"a" * 9000 + b"\r\n\r\n", 431),
        (b"GET /" + b"a" * 20_000 + b" HTTP/1.1\r\n\r\n", 431),
        (b"\r\n" * 5000, 431),
    ],
    ids=[
        "tls",
        "no-version",
        "no-slash",
        "two-spaces",
        "http2-preface",
        "http2",
        "space-before-colon",
        "folded",
        "no-colon",
        "many-headers",
        "long-header",
        "long-target",
        "only-empty-lines",
    ],
)
async def test_garbage_gets_a_4xx_or_5xx_and_the_server_carries_on(
    make_config: Callable[..., Config],
    make_harness: MakeHarness,
    request_bytes: bytes,
    status: int,
) -> None:
    harness = make_harness(make_config())
    async with served(harness) as port:
        response = parse_response(await exchange(port, request_bytes))
        assert response.status == status
        assert response.headers["connection"] == "close"
        assert (await get(port, "/healthz")).status == 200


async def test_a_client_that_hangs_up_or_resets_costs_nothing(
    make_config: Callable[..., Config], make_harness: MakeHarness
) -> None:
    harness = make_harness(make_config())
    async with served(harness) as port:
        for partial in (b"", b"GET /readyz HT", b"GET /metrics HTTP/1.1\r\n"):
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(partial)
            await writer.drain()
            writer.transport.abort()
        assert (await get(port, "/healthz")).status == 200


async def test_a_slow_client_is_dropped_after_the_read_timeout(
    make_config: Callable[..., Config], make_harness: MakeHarness
) -> None:
    harness = make_harness(make_config())
    async with served(harness, read_timeout=0.3) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        started = time.monotonic()
        writer.write(b"GET /readyz HTTP/1.1\r\n")  # and never the rest
        await writer.drain()
        async with asyncio.timeout(3):
            assert await reader.read() == b""
        assert 0.25 <= time.monotonic() - started < 2
        await close_stream(writer)


async def test_slow_and_idle_clients_never_hold_up_the_refresh_loop_or_a_probe(
    make_config: Callable[..., Config], make_harness: MakeHarness
) -> None:
    """Forty clients that trickle their requests a byte at a time, over a limit
    of eight connections: the loop keeps its tick and the kubelet's probe gets
    its answer at once, because the longest-waiting slow client makes room."""
    config = make_config(tick_seconds="0.01")
    harness = make_harness(config)
    ticks: list[float] = []

    async def loop() -> None:
        while True:
            await harness.refresher.refresh_due()
            ticks.append(time.monotonic())
            await asyncio.sleep(0.01)

    async def trickle(port: int) -> None:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            for byte in b"GET /metrics HTTP/1.1\r\nHost: x\r\n":
                writer.write(bytes([byte]))
                await writer.drain()
                await asyncio.sleep(0.05)
        except OSError:
            pass  # dropped by the server: that is the point
        finally:
            await close_stream(writer)

    async with served(harness, max_connections=8, read_timeout=10) as port:
        loop_task = asyncio.create_task(loop())
        slow = [asyncio.create_task(trickle(port)) for _ in range(40)]
        await asyncio.sleep(0.5)
        started = time.monotonic()
        response = await get(port, "/healthz")
        answered_in = time.monotonic() - started
        await asyncio.sleep(0.2)
        for task in [loop_task, *slow]:
            task.cancel()
        await asyncio.gather(loop_task, *slow, return_exceptions=True)
    assert response.status == 200
    assert answered_in < 0.5
    gaps = [b - a for a, b in itertools.pairwise(ticks)]
    assert len(ticks) > 40
    assert max(gaps) < 0.25


async def test_stopping_the_server_ends_open_connections_at_once(
    make_config: Callable[..., Config], make_harness: MakeHarness
) -> None:
    harness = make_harness(make_config())
    readers = []
    async with served(harness, read_timeout=60) as port:
        for _ in range(5):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET /readyz HTTP/1.1\r\n")
            readers.append((reader, writer))
        await asyncio.sleep(0.1)
        stopping = time.monotonic()
    assert time.monotonic() - stopping < 0.5
    for reader, writer in readers:
        async with asyncio.timeout(1):
            with suppress(ConnectionResetError):
                assert await reader.read() == b""
        await close_stream(writer)


async def test_the_runtime_serves_probes_until_asked_to_stop(
    make_config: Callable[..., Config],
) -> None:
    port = free_port()
    config = make_config(listen=f"127.0.0.1:{port}", tick_seconds="0.1")
    stop = asyncio.Event()
    task = asyncio.create_task(
        runtime.run_until_stopped(config, stop=stop, handle_signals=False)
    )
    response: RawResponse | None = None
    for _ in range(100):
        with suppress(OSError):
            response = await get(port, "/readyz")
        if response is not None and response.status == 200:
            break
        await asyncio.sleep(0.05)
    assert response is not None and response.status == 200
    assert (await get(port, "/healthz")).status == 200
    stopped_at = time.monotonic()
    stop.set()
    assert await asyncio.wait_for(task, 5) == 0
    assert time.monotonic() - stopped_at < 2
    assert (config.token_dir / "aws-token").exists()
