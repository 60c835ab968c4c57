"""`python -m webhook serve --source kubernetes` as a process, against the fake
API server: ready once synced, /mutate and /token from the same cache, and a
clean stop on SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import signal
import socket
import ssl
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from tests.webhook.cluster_support import PROJECT_LABEL, admission_review, aws_identity
from tests.webhook.fake_kube import FakeKube, eventually, write_kubeconfig
from webhook.cli import main

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextlib.asynccontextmanager
async def webhook_process(
    tmp_path: Path, fake: FakeKube, port: int
) -> AsyncIterator[asyncio.subprocess.Process]:
    kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", fake.url)
    # Nothing from this machine's environment: no kubeconfig, no pod, no proxy.
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path)}
    with (tmp_path / "webhook.log").open("wb") as log:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "webhook", "serve", "--shutdown-delay", "0",
            "--source", "kubernetes",
            "--kubeconfig", str(kubeconfig),
            "--state-dir", str(tmp_path / "state"),
            "--listen", f"127.0.0.1:{port}",
            "--metrics-listen", f"127.0.0.1:{free_port()}",
            cwd=ROOT, env=env, stdout=asyncio.subprocess.PIPE, stderr=log,
        )  # fmt: skip
        try:
            yield process
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()


async def test_serve_from_the_api_server_is_ready_once_synced_and_stops_on_sigterm(
    fake_kube: FakeKube, tmp_path: Path
) -> None:
    fake_kube.put_namespace("team-a", {PROJECT_LABEL: "team-a"})
    fake_kube.put_identity(aws_identity("s3-reader"))
    port = free_port()
    base = f"https://127.0.0.1:{port}"
    ca = tmp_path / "state" / "tls.crt"
    async with webhook_process(tmp_path, fake_kube, port) as process:
        await eventually(
            lambda: ca.exists() or process.returncode is not None, within=20
        )
        trust = ssl.create_default_context(cafile=str(ca))
        async with aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=trust)
        ) as session:
            for _ in range(2000):
                assert process.returncode is None, (
                    tmp_path / "webhook.log"
                ).read_text()
                with contextlib.suppress(aiohttp.ClientConnectionError):
                    async with session.get(f"{base}/readyz") as response:
                        if response.status == 200:
                            break
                await asyncio.sleep(0.01)
            else:
                raise AssertionError("the webhook never became ready")

            async with session.post(f"{base}/mutate", json=admission_review()) as r:
                assert "patch" in (await r.json())["response"]

            pod = fake_kube.put_pod("team-a", "app-1")
            token = fake_kube.issue_token(audiences=[base], pod=pod)
            async with session.post(
                f"{base}/token",
                json={"provider": "aws", "identity": "s3-reader"},
                headers={"Authorization": f"Bearer {token}"},
            ) as r:
                assert r.status == 200, await r.text()
        process.send_signal(signal.SIGTERM)
        stdout, _ = await asyncio.wait_for(process.communicate(), timeout=15)
    assert process.returncode == 0, (tmp_path / "webhook.log").read_text()
    assert stdout.decode().strip() == "stopped"
    assert token not in (tmp_path / "webhook.log").read_text()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--identities", "identities.yaml"], "--source file only"),
        (["--unready-after", "0"], "--unready-after"),
        (
            ["--kubeconfig", "/nonexistent/kubeconfig"],
            "kubeconfig /nonexistent/kubeconfig does not exist",
        ),
    ],
)
def test_serve_from_the_api_server_refuses_settings_it_cannot_use(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    extra: list[str],
    message: str,
) -> None:
    argv = [
        "serve", "--source", "kubernetes", "--state-dir", str(tmp_path / "state"),
        "--listen", f"127.0.0.1:{free_port()}", *extra,
    ]  # fmt: skip
    assert main(argv, out=io.StringIO()) == 2
    assert message in capsys.readouterr().err
