"""The serving certificate follows its files on a real TLS server: new
connections get the rotated pair, and no request in flight is dropped."""

from __future__ import annotations

import asyncio
import os
import ssl
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest

from tests.webhook.fake_kube import eventually, running
from webhook.server import Services, create_app, reload_certificates, running_site
from webhook.tls import ReloadingContext, write_self_signed


def der(pem_path: Path) -> bytes:
    return ssl.PEM_cert_to_DER_cert(pem_path.read_text())


class SecretVolume:
    """A directory laid out as the kubelet lays out a Secret volume:
    `tls.crt -> ..data/tls.crt`, and an update swaps `..data` atomically."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.generation = 0
        for name in ("tls.crt", "tls.key"):
            (root / name).symlink_to(Path("..data") / name)

    def publish(self) -> Path:
        """Write a new self-signed pair and swap it in; returns its cert."""
        self.generation += 1
        version = self.root / f"..2026_01_01_00_00_{self.generation:02d}"
        version.mkdir()
        write_self_signed(
            str(version / "tls.crt"), str(version / "tls.key"), hosts=["127.0.0.1"]
        )
        staged = self.root / "..data_tmp"
        staged.symlink_to(version.name)
        os.replace(staged, self.root / "..data")
        return version / "tls.crt"


@dataclass
class TlsServer:
    port: int
    tls: ReloadingContext

    async def presented(self) -> bytes:
        """The certificate a new connection is shown (DER)."""
        _, writer = await asyncio.open_connection(
            "127.0.0.1", self.port, ssl=unverified()
        )
        try:
            ssl_object = writer.get_extra_info("ssl_object")
            return bytes(ssl_object.getpeercert(binary_form=True))
        finally:
            writer.close()
            await writer.wait_closed()


@pytest.fixture
def volume(tmp_path: Path) -> SecretVolume:
    return SecretVolume(tmp_path)


@pytest.fixture
async def server(volume: SecretVolume, services: Services) -> AsyncIterator[TlsServer]:
    volume.publish()
    tls = ReloadingContext(str(volume.root / "tls.crt"), str(volume.root / "tls.key"))
    async with running_site(create_app(services), "127.0.0.1:0", tls) as runner:
        yield TlsServer(int(runner.addresses[0][1]), tls)


def trusting(cert: Path) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(cert))


def unverified() -> ssl.SSLContext:
    """For looking at the certificate presented: each pair here is its own
    self-signed CA with the same subject, so no one context trusts both."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


async def test_a_rotated_pair_is_served_to_new_connections_without_dropping_requests(
    volume: SecretVolume, server: TlsServer
) -> None:
    first = next(volume.root.glob("..2026_*_01")) / "tls.crt"
    failures: list[BaseException] = []
    answered = {"kept": 0, "new": 0}
    stop = asyncio.Event()

    async def keep_asking(kind: str, connector: aiohttp.TCPConnector) -> None:
        async with aiohttp.ClientSession(connector=connector) as session:
            while not stop.is_set():
                try:
                    async with session.get(
                        f"https://127.0.0.1:{server.port}/healthz"
                    ) as response:
                        assert response.status == 200
                        answered[kind] += 1
                except Exception as exc:
                    failures.append(exc)
                    return
                await asyncio.sleep(0)

    def on_kept_connection() -> Awaitable[None]:
        # One connection, opened (and verified) before the rotation and
        # reused throughout it.
        return keep_asking("kept", aiohttp.TCPConnector(ssl=trusting(first), limit=1))

    def on_new_connections() -> Awaitable[None]:
        # A handshake per request, some of them while the pair is reloaded.
        connector = aiohttp.TCPConnector(ssl=unverified(), force_close=True)
        return keep_asking("new", connector)

    jobs = [
        on_kept_connection,
        on_new_connections,
        lambda: reload_certificates(server.tls, 0.01),
    ]
    async with running(jobs):
        await eventually(lambda: min(answered.values()) >= 5, what="early requests")
        assert await server.presented() == der(first)

        second = volume.publish()
        await _until_presented(server, der(second))
        after = dict(answered)
        await eventually(
            lambda: all(answered[k] >= after[k] + 5 for k in answered),
            what="requests after the rotation",
        )
        stop.set()

    assert failures == []


async def test_a_half_written_pair_keeps_the_loaded_one_until_it_matches(
    tmp_path: Path, services: Services, caplog: pytest.LogCaptureFixture
) -> None:
    cert, key = tmp_path / "tls.crt", tmp_path / "tls.key"
    write_self_signed(str(cert), str(key), hosts=["127.0.0.1"])
    old = cert.read_bytes()
    tls = ReloadingContext(str(cert), str(key))
    async with running_site(create_app(services), "127.0.0.1:0", tls) as runner:
        server = TlsServer(int(runner.addresses[0][1]), tls)
        staged = tmp_path / "next"
        staged.mkdir()
        write_self_signed(
            str(staged / "tls.crt"), str(staged / "tls.key"), hosts=["127.0.0.1"]
        )
        # A tool that rewrites the files in place writes one, then the other.
        cert.write_bytes((staged / "tls.crt").read_bytes())
        assert tls.refresh() is False
        assert "not loadable yet" in caplog.text
        assert await server.presented() == ssl.PEM_cert_to_DER_cert(old.decode())

        key.write_bytes((staged / "tls.key").read_bytes())
        assert tls.refresh() is True
        assert await server.presented() == der(cert)


async def _until_presented(server: TlsServer, expected: bytes) -> None:
    for _ in range(500):
        if await server.presented() == expected:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the rotated certificate was never presented")
