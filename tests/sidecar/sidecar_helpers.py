"""Helpers for the sidecar tests: virtual time, tokens, a TLS issuer, processes.

Kept apart from conftest.py so that test modules can import them by name.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import json
import os
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from prometheus_client import CollectorRegistry

from oidc_tokens.claims import Subject, build_claims, unverified_claims
from oidc_tokens.keys import load_private_key, private_key_pem
from oidc_tokens.signing import sign
from sidecar.config import Config, KeyMode, ProviderConfig
from sidecar.refresh import ProviderState, Refresher
from sidecar.settings import Settings
from sidecar.signer import KeyFileSigner, KeySource
from sidecar.tokens import RefreshError, Token, TokenSource
from tests.streams import close_stream

REPO_ROOT = Path(__file__).resolve().parents[2]
ISSUER = "https://oidc.example.test"
GCP_AUDIENCE = (
    "//iam.googleapis.com/projects/123456789012/locations/global/"
    "workloadIdentityPools/k8s-pool/providers/k8s-oidc"
)
START = 1_800_000_000.0


# --- time ---------------------------------------------------------------------


class FakeClock:
    """Virtual wall and monotonic clocks; sleeping advances both at once."""

    def __init__(self, start: float = START) -> None:
        self.now = start
        self.mono = 1_000.0
        self.sleeps: list[float] = []
        self._alarms: list[tuple[float, asyncio.Event]] = []

    def alarm(self, wall_time: float) -> asyncio.Event:
        """An event set once a sleep brings the wall clock to `wall_time`."""
        event = asyncio.Event()
        self._alarms.append((wall_time, event))
        self._ring()
        return event

    def _ring(self) -> None:
        for wall_time, event in self._alarms:
            if self.now >= wall_time:
                event.set()

    def wall(self) -> float:
        return self.now

    def monotonic(self) -> float:
        return self.mono

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.advance(seconds)
        self._ring()
        await asyncio.sleep(0)

    def advance(self, seconds: float) -> None:
        self.now += seconds
        self.mono += seconds

    def jump_wall(self, seconds: float) -> None:
        """Step only the wall clock, as NTP or a node resume does."""
        self.now += seconds


# --- configs and refreshers ---------------------------------------------------


def key_mode_settings(token_dir: Path, key_file: Path, **overrides: str) -> Settings:
    values = {
        "mode": "key",
        "issuer": ISSUER,
        "key_file": str(key_file),
        "token_dir": str(token_dir),
        "aws_identity": "s3-reader",
        "project": "team-a",
        "namespace": "team-a",
        "pod_name": "app-7d5b9",
        "service_account": "app",
        "listen": "127.0.0.1:0",
    }
    values.update(overrides)
    return Settings(**values)


@dataclass
class Harness:
    """A Refresher on virtual time with its parts in reach."""

    config: Config
    refresher: Refresher
    clock: FakeClock
    registry: CollectorRegistry

    def sample(self, name: str, **labels: str) -> float | None:
        return self.registry.get_sample_value(
            f"workload_identity_sidecar_{name}", labels
        )

    def failures(self, provider: str, reason: str) -> float:
        return (
            self.sample("refresh_failures_total", provider=provider, reason=reason)
            or 0.0
        )

    def attempts(self, provider: str) -> float:
        return self.sample("refresh_attempts_total", provider=provider) or 0.0

    def state(self, provider: str = "aws") -> ProviderState:
        return next(s for s in self.refresher.states if s.provider == provider)

    async def tick(self, seconds: float | None = None) -> None:
        """One pass of the loop, then let `seconds` (default: one tick) pass."""
        await self.refresher.refresh_due()
        self.clock.advance(self.config.tick_seconds if seconds is None else seconds)


async def run_loop_until(harness: Harness, wall_time: float) -> None:
    """Run the real loop on virtual time until the wall clock reaches `wall_time`."""
    reached = harness.clock.alarm(wall_time)
    task = asyncio.create_task(harness.refresher.run())
    try:
        await reached.wait()
    finally:
        task.cancel()
        with suppress(asyncio.CancelledError):
            await task


class SwitchableSource:
    """Wraps a source; while `failing`, every fetch fails as the signer is down."""

    def __init__(self, inner: TokenSource) -> None:
        self.inner = inner
        self.mode = inner.mode
        self.failing = False
        self.fetched_at: list[float] = []

    async def fetch(self, provider: ProviderConfig, *, now: float) -> Token:
        self.fetched_at.append(now)
        if self.failing:
            raise RefreshError("signing", "the signer is down")
        return await self.inner.fetch(provider, now=now)


def key_source(config: Config) -> KeySource:
    assert isinstance(config.signing, KeyMode)
    return KeySource(
        signer=KeyFileSigner(config.signing.key_file),
        issuer=config.signing.issuer,
        pod=config.pod,
    )


def file_claims(path: Path) -> dict[str, Any]:
    return unverified_claims(path.read_text())


# --- files --------------------------------------------------------------------


def break_key(key_file: Path) -> None:
    """Make every signing attempt fail: the key file no longer holds a key."""
    key_file.write_text("not a key")


def restore_key(key_file: Path, pem: bytes) -> None:
    key_file.write_bytes(pem)


def rewrite_in_place(path: Path, data: bytes) -> None:
    """Overwrite `path` without a rename (same inode), with a newer mtime."""
    before = path.stat()
    path.write_bytes(data)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns + 1_000_000))


# --- tokens -------------------------------------------------------------------


def signed_token(pem: bytes, *, now: float, lifetime: int = 3600) -> str:
    """A token as the real issuer would sign it."""
    subject = Subject("s3-reader", "team-a", "team-a", "app", "app-7d5b9")
    claims = build_claims(
        subject,
        issuer=ISSUER,
        audience="sts.amazonaws.com",
        now=int(now),
        lifetime_seconds=lifetime,
    )
    return sign(claims, load_private_key(pem))


# --- TLS and a fake issuer ----------------------------------------------------


@dataclass(frozen=True)
class TlsFiles:
    ca: Path
    cert: Path
    key: Path
    other_ca: Path
    other_name_cert: Path
    """Signed by `ca`, for issuer.test only: not for 127.0.0.1."""
    other_name_key: Path


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _ca(now: dt.datetime) -> tuple[rsa.RSAPrivateKey, x509.Certificate]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    usage = x509.KeyUsage(
        digital_signature=True,
        key_cert_sign=True,
        crl_sign=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        encipher_only=False,
        decipher_only=False,
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("sidecar test CA"))
        .issuer_name(_name("sidecar test CA"))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(usage, critical=True)
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
        )
        .sign(key, hashes.SHA256())
    )
    return key, cert


def _server_cert(
    ca_key: rsa.RSAPrivateKey,
    ca_cert: x509.Certificate,
    names: Sequence[x509.GeneralName],
    now: dt.datetime,
) -> tuple[rsa.RSAPrivateKey, x509.Certificate]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("issuer.test"))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(list(names)), critical=False)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    return key, cert


def make_tls_files(directory: Path) -> TlsFiles:
    """A CA, a server certificate for 127.0.0.1 signed by it, one for another
    name, and an unrelated CA."""
    now = dt.datetime.now(dt.UTC)
    ca_key, ca_cert = _ca(now)
    _, other_ca = _ca(now)
    local = [
        x509.DNSName("localhost"),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
    ]
    server_key, server_cert = _server_cert(ca_key, ca_cert, local, now)
    elsewhere = [x509.DNSName("issuer.test")]
    other_key, other_cert = _server_cert(ca_key, ca_cert, elsewhere, now)
    files = TlsFiles(
        ca=directory / "ca.pem",
        cert=directory / "server.pem",
        key=directory / "server.key",
        other_ca=directory / "other-ca.pem",
        other_name_cert=directory / "other-name.pem",
        other_name_key=directory / "other-name.key",
    )
    files.ca.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    files.other_ca.write_bytes(other_ca.public_bytes(serialization.Encoding.PEM))
    files.cert.write_bytes(server_cert.public_bytes(serialization.Encoding.PEM))
    files.key.write_bytes(private_key_pem(server_key))
    files.other_name_cert.write_bytes(
        other_cert.public_bytes(serialization.Encoding.PEM)
    )
    files.other_name_key.write_bytes(private_key_pem(other_key))
    return files


@dataclass
class FakeIssuer:
    """An in-process issuer `/token`: records requests and answers as told."""

    pem: bytes
    lifetime: int = 3600
    answers: list[tuple[int, Any]] = field(default_factory=list)
    """Queued (status, body) answers; a bytes body is sent raw. Empty: sign."""
    requests: list[dict[str, Any]] = field(default_factory=list)
    issued: list[str] = field(default_factory=list)
    url: str = ""

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.requests.append(
            {
                "authorization": request.headers.get("Authorization"),
                "content_type": request.content_type,
                "body": await request.json(),
            }
        )
        if self.answers:
            status, answer = self.answers.pop(0)
            if status == 307:
                raise web.HTTPTemporaryRedirect(answer)
            if isinstance(answer, bytes):
                return web.Response(status=status, body=answer)
            return web.json_response(answer, status=status)
        now = int(time.time())
        token = signed_token(self.pem, now=now, lifetime=self.lifetime)
        self.issued.append(token)
        return web.json_response({"token": token, "expiresAt": now + self.lifetime})


# --- processes ----------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def subprocess_env(**settings: str) -> dict[str, str]:
    """Environment for `python -m sidecar`, with nothing inherited that could
    change its behaviour (WI_ settings, proxies)."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("WI_") and "proxy" not in key.lower()
    }
    env["PYTHONPATH"] = str(REPO_ROOT)
    env["PYTHONUNBUFFERED"] = "1"
    env.update({"WI_" + name.upper(): value for name, value in settings.items()})
    return env


_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def http_get(url: str, *, timeout: float = 2.0) -> tuple[int, bytes]:
    """GET without any proxy; (status, body), with (0, b"") when nobody answers."""
    try:
        with _DIRECT.open(url, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()
    except OSError:
        return 0, b""


def wait_for(condition: Any, *, timeout: float, interval: float = 0.05) -> Any:
    """Poll `condition()` until it returns something truthy; fail after `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = condition()
        if result:
            return result
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout} s")


# --- raw HTTP/1.1 against the probe server ------------------------------------


@dataclass(frozen=True)
class RawResponse:
    status: int
    headers: dict[str, str]
    """Names in lower case."""
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def parse_response(data: bytes) -> RawResponse:
    """One whole response, as read up to the server's close."""
    head, separator, body = data.partition(b"\r\n\r\n")
    assert separator, f"no complete head in {data[:80]!r}"
    status_line, *lines = head.decode("latin-1").split("\r\n")
    version, code, _ = status_line.split(" ", 2)
    assert version == "HTTP/1.1"
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.lower()] = value.strip()
    return RawResponse(int(code), headers, body)


async def exchange(port: int, request: bytes) -> bytes:
    """Send `request` as it is and read everything until the server closes
    (within 5 s)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        async with asyncio.timeout(5):
            return await reader.read()
    finally:
        await close_stream(writer)


async def get(
    port: int, path: str, *, headers: dict[str, str] | None = None
) -> RawResponse:
    lines = [f"GET {path} HTTP/1.1", "Host: 127.0.0.1", "User-Agent: test"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    return parse_response(
        await exchange(port, ("\r\n".join(lines) + "\r\n\r\n").encode())
    )
