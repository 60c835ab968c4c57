"""Two `python -m webhook serve --source kubernetes` processes against the fake
API server: one reports drift on its metrics port, and on SIGTERM it frees
the Lease and the other takes over."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from tests.webhook.cluster_support import PROJECT_LABEL, aws_identity
from tests.webhook.fake_kube import FakeKube
from tests.webhook.test_serve_kubernetes import ROOT, free_port, write_kubeconfig

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@contextlib.asynccontextmanager
async def replica(
    tmp_path: Path, fake: FakeKube, name: str, metrics_port: int
) -> AsyncIterator[asyncio.subprocess.Process]:
    kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", fake.url)
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path)}
    with (tmp_path / f"{name}.log").open("wb") as log:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "webhook", "serve", "--shutdown-delay", "0",
            "--source", "kubernetes",
            "--kubeconfig", str(kubeconfig),
            "--state-dir", str(tmp_path / name),
            "--listen", f"127.0.0.1:{free_port()}",
            "--metrics-listen", f"127.0.0.1:{metrics_port}",
            "--drift-interval", "0.1",
            "--lease-duration", "2",
            cwd=ROOT, env=env, stdout=asyncio.subprocess.PIPE, stderr=log,
        )  # fmt: skip
        try:
            yield process
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()


async def scrape(session: aiohttp.ClientSession, port: int) -> Samples:
    try:
        async with session.get(f"http://127.0.0.1:{port}/metrics") as response:
            text = await response.text()
    except aiohttp.ClientConnectionError:
        return {}
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def leads(samples: Samples) -> bool:
    return samples.get(("workload_identity_drift_leader", ())) == 1


def drift(samples: Samples) -> dict[tuple[str, ...], float]:
    return {
        tuple(v for _, v in labels): value
        for (name, labels), value in samples.items()
        if name == "workload_identity_drift_pods"
    }


async def until(
    check: Callable[[], Awaitable[bool]], what: str, within: float = 30.0
) -> None:
    deadline = time.monotonic() + within
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def test_two_serve_processes_elect_one_reporter_and_hand_over_on_sigterm(
    fake_kube: FakeKube, tmp_path: Path
) -> None:
    fake_kube.put_namespace("team-a", {PROJECT_LABEL: "team-a"})
    fake_kube.put_identity(aws_identity("s3-reader"))
    fake_kube.put_pod("team-a", "made-while-down")
    ports = {"a": free_port(), "b": free_port()}
    async with (
        replica(tmp_path, fake_kube, "a", ports["a"]) as a,
        replica(tmp_path, fake_kube, "b", ports["b"]) as b,
        aiohttp.ClientSession() as session,
    ):
        processes = {"a": a, "b": b}
        seen: dict[str, Samples] = {}

        async def one_reporting() -> bool:
            for name, port in ports.items():
                assert processes[name].returncode is None, (
                    tmp_path / f"{name}.log"
                ).read_text()
                seen[name] = await scrape(session, port)
            return [leads(s) for s in seen.values()].count(True) == 1 and any(
                drift(s) == {("s3-reader", "missing"): 1} for s in seen.values()
            )

        await until(one_reporting, "one replica reporting the drift")
        leader = next(name for name in seen if leads(seen[name]))
        follower = "b" if leader == "a" else "a"
        assert drift(seen[follower]) == {}, "the follower exports no drift"

        processes[leader].send_signal(signal.SIGTERM)
        await asyncio.wait_for(processes[leader].wait(), timeout=15)
        assert processes[leader].returncode == 0

        async def took_over() -> bool:
            samples = await scrape(session, ports[follower])
            return leads(samples) and drift(samples) == {("s3-reader", "missing"): 1}

        await until(took_over, "the other replica to take over", within=30)
    # Each leadership term tells about the drift once. A replica starved of CPU
    # (a loaded test machine) can lose its Lease and win it back, which is a
    # new term with its own Event, so this is a lower bound.
    assert len(fake_kube.events) >= 2, "each term tells about the drift"
