"""Fixtures for the sidecar tests; the helpers they use are in sidecar_helpers."""

from __future__ import annotations

import asyncio
import os
import shutil
import ssl
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import ec
from prometheus_client import CollectorRegistry

from oidc_tokens.keys import generate_rsa_key, private_key_pem
from sidecar.config import Config, KeyMode, validate
from sidecar.metrics import SidecarMetrics
from sidecar.refresh import Refresher
from sidecar.signer import KeyFileSigner, KeySource
from sidecar.tokens import TokenSource
from tests.sidecar.sidecar_helpers import (
    REPO_ROOT,
    FakeClock,
    FakeIssuer,
    Harness,
    TlsFiles,
    key_mode_settings,
    make_tls_files,
    subprocess_env,
)


@pytest.fixture(autouse=True)
async def no_tasks_left_behind() -> AsyncIterator[None]:
    """Fail any test that leaves asyncio tasks running."""
    yield
    current = asyncio.current_task()
    left = [t for t in asyncio.all_tasks() if t is not current and not t.done()]
    assert not left, f"tasks left running: {left}"


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture(scope="session")
def rsa_pem() -> bytes:
    return private_key_pem(generate_rsa_key())


@pytest.fixture(scope="session")
def other_rsa_pem() -> bytes:
    return private_key_pem(generate_rsa_key())


@pytest.fixture(scope="session")
def ec_pem() -> bytes:
    return private_key_pem(ec.generate_private_key(ec.SECP256R1()))


@pytest.fixture
def key_file(tmp_path: Path, rsa_pem: bytes) -> Path:
    path = tmp_path / "signing" / "key.pem"
    path.parent.mkdir()
    path.write_bytes(rsa_pem)
    return path


@pytest.fixture
def token_dir(tmp_path: Path) -> Path:
    path = tmp_path / "tokens"
    path.mkdir()
    return path


@pytest.fixture
def shm_dir(tmp_path: Path) -> Iterator[Path]:
    """A directory on tmpfs, like the pod's memory volume, when the host has one."""
    shm = Path("/dev/shm")
    if not (shm.is_dir() and os.access(shm, os.W_OK)):
        yield tmp_path
        return
    directory = Path(tempfile.mkdtemp(prefix="wi-sidecar-test-", dir=shm))
    try:
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def make_config(token_dir: Path, key_file: Path) -> Callable[..., Config]:
    """A key-mode config writing into `token_dir`; keywords override settings."""

    def make(**overrides: str) -> Config:
        return validate(key_mode_settings(token_dir, key_file, **overrides))

    return make


@pytest.fixture
def make_harness(
    clock: FakeClock, registry: CollectorRegistry
) -> Callable[..., Harness]:
    """A Refresher for `config` on virtual time, with the jitter fixed."""

    def make(
        config: Config, *, source: TokenSource | None = None, jitter: float = 0.0
    ) -> Harness:
        if source is None:
            assert isinstance(config.signing, KeyMode)
            source = KeySource(
                signer=KeyFileSigner(config.signing.key_file),
                issuer=config.signing.issuer,
                pod=config.pod,
            )
        metrics = SidecarMetrics(
            registry, mode=source.mode, providers=[p.provider for p in config.providers]
        )
        refresher = Refresher(
            providers=config.providers,
            source=source,
            metrics=metrics,
            clock=clock,
            file_mode=config.file_mode,
            tick_seconds=config.tick_seconds,
            jitter=lambda: jitter,
        )
        return Harness(config, refresher, clock, registry)

    return make


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return make_tls_files(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def server_ssl_context(tls_files: TlsFiles) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(tls_files.cert, tls_files.key)
    return context


@pytest.fixture
async def fake_issuer(
    aiohttp_server: Any, rsa_pem: bytes, server_ssl_context: ssl.SSLContext
) -> FakeIssuer:
    """A TLS issuer on 127.0.0.1 whose certificate `tls_files.ca` verifies."""
    issuer = FakeIssuer(pem=rsa_pem)
    app = web.Application()
    app.router.add_post("/token", issuer.handle)
    server = await aiohttp_server(app, ssl=server_ssl_context)
    issuer.url = f"https://127.0.0.1:{server.port}/token"
    return issuer


@pytest.fixture
def started(python_processes: list[subprocess.Popen[bytes]]) -> Any:
    """Start `python -m sidecar` with stderr in a file; killed at teardown."""

    def start(
        stderr_file: Path, *, python_flags: tuple[str, ...] = (), **settings: str
    ) -> subprocess.Popen[bytes]:
        with stderr_file.open("wb") as stderr:
            process = subprocess.Popen(
                [sys.executable, *python_flags, "-m", "sidecar"],
                cwd=REPO_ROOT,
                env=subprocess_env(**settings),
                stdout=subprocess.DEVNULL,
                stderr=stderr,
            )
        python_processes.append(process)
        return process

    return start


@pytest.fixture
def python_processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    processes: list[subprocess.Popen[bytes]] = []
    yield processes
    for process in processes:
        if process.poll() is None:
            process.kill()
            process.wait()
