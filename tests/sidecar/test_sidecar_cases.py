"""The sidecar's cases in /work/shared/cases: each test names its case and
checks what the case expects of the sidecar. (What it expects of the webhook,
the pod spec, is tested in tests/webhook.)"""

from __future__ import annotations

import asyncio
import functools
import itertools
import json
import os
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path
from typing import Any

import jwt
import pytest
from prometheus_client.parser import text_string_to_metric_families

from oidc_tokens.claims import CLOCK_SKEW_SECONDS
from oidc_tokens.keys import jwks, load_public_key
from sidecar import files
from sidecar.config import Config, validate
from sidecar.server import Probes, ProbeSettings
from tests.sidecar.sidecar_helpers import (
    GCP_AUDIENCE,
    ISSUER,
    REPO_ROOT,
    FakeIssuer,
    Harness,
    SwitchableSource,
    TlsFiles,
    break_key,
    file_claims,
    free_port,
    get,
    http_get,
    key_mode_settings,
    key_source,
    restore_key,
    run_loop_until,
    subprocess_env,
    wait_for,
)

MakeHarness = Callable[..., Harness]
GCP_FILES = ("gcp-credentials.json", "gcp-token")
ALL_FILES = ("aws-token", "gcp-token", "gcp-credentials.json")


@functools.cache
def published_jwk(pem: bytes) -> dict[str, Any]:
    (jwk,) = jwks([load_public_key(pem)])["keys"]
    return dict(jwk)


def verified(token: str, pem: bytes, audience: str = "sts.amazonaws.com") -> Any:
    """Claims of `token` once its signature, kid, issuer and audience check out
    against the JWKS published for `pem`; times are left to the caller."""
    jwk = published_jwk(pem)
    assert jwt.get_unverified_header(token)["kid"] == jwk["kid"]
    return jwt.decode(
        token,
        jwt.PyJWK(jwk),
        algorithms=[jwk["alg"]],
        audience=audience,
        issuer=ISSUER,
        options={"verify_exp": False, "verify_iat": False, "verify_nbf": False},
    )


def strictly_valid_at(claims: dict[str, Any], now: float) -> bool:
    """What a verifier with zero leeway whose clock reads `now` decides."""
    return claims["iat"] <= now and claims["nbf"] <= now and now < claims["exp"]


def probes_for(harness: Harness, *, margin: float = 5.0) -> Probes:
    return Probes(
        refresher=harness.refresher,
        registry=harness.registry,
        clock=harness.clock,
        settings=ProbeSettings(ready_margin_seconds=margin, stall_after_seconds=20),
    )


def probe(probes: Probes, path: str) -> tuple[int, Any]:
    reply = probes.answer("GET", path, {})
    return reply.status, json.loads(reply.body)


def scraped(text: str, name: str, **labels: str) -> float:
    """The sum of the samples of the sidecar's `name` that carry `labels`."""
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == f"workload_identity_sidecar_{name}"
        and labels.items() <= sample.labels.items()
    )


# --- case-10 ------------------------------------------------------------------


@pytest.mark.skipif(os.geteuid() != 0, reason="acting as other users needs root")
async def test_case_10_apps_under_other_uids_read_every_file_and_replace_none(
    shm_dir: Path, key_file: Path, make_harness: MakeHarness
) -> None:
    """case-10: app containers running as uids 10001 and 20002, with no fsGroup
    and no shared group, read aws-token, gcp-token and gcp-credentials.json
    whole, and can neither open them for writing nor add, remove or replace a
    file in the token directory. The files are 0644 (no group or other write,
    other read) and the directory the sidecar creates is 0755, whatever the
    umask. (In a pod the apps' mount is read-only as well; tests/webhook checks
    the pod spec.)"""
    # The volume's mount point, which others may enter.
    await asyncio.to_thread(shm_dir.chmod, 0o755)
    token_dir = shm_dir / "workloadidentity.dev"
    umask = os.umask(0)
    try:
        files.ensure_writable_dir(token_dir)
        config = validate(
            key_mode_settings(
                token_dir,
                key_file,
                gcp_identity="audit-bq",
                gcp_audience=GCP_AUDIENCE,
                gcp_service_account="audit-bq@project-a.iam.gserviceaccount.com",
            )
        )
        await make_harness(config).tick()
    finally:
        os.umask(umask)

    assert stat.S_IMODE(token_dir.stat().st_mode) == 0o755
    for name in ALL_FILES:
        mode = stat.S_IMODE((token_dir / name).stat().st_mode)
        assert mode & 0o022 == 0, name
        assert mode & 0o004, name
    written = {name: (token_dir / name).read_bytes() for name in ALL_FILES}
    assert json.loads(written["gcp-credentials.json"])["type"] == "external_account"

    for uid in (10001, 20002):
        as_app = functools.partial(
            subprocess.run,
            user=uid,
            group=uid,
            extra_groups=[],
            cwd="/",
            capture_output=True,
            timeout=10,
            check=False,
        )
        for name in ALL_FILES:
            path = str(token_dir / name)
            read = as_app(["cat", path])
            assert (read.returncode, read.stdout) == (0, written[name]), (uid, name)
            append = as_app(["sh", "-c", ': >> "$1"', "sh", path])
            assert append.returncode != 0, (uid, name)
            assert b"Permission denied" in append.stderr
        for command in (
            ["sh", "-c", ': > "$1"', "sh", str(token_dir / "planted")],
            ["rm", "-f", str(token_dir / "aws-token")],
            ["mv", str(token_dir / "gcp-token"), str(token_dir / "aws-token")],
        ):
            denied = as_app(command)
            assert denied.returncode != 0, (uid, command)
            assert b"Permission denied" in denied.stderr
    assert {name: (token_dir / name).read_bytes() for name in ALL_FILES} == written
    assert sorted(p.name for p in token_dir.iterdir()) == sorted(ALL_FILES)


# --- case-12 ------------------------------------------------------------------

READER = r"""
import json, os, sys, time

stop, paths = sys.argv[1], sys.argv[2:]
seen = {path: set() for path in paths}
reads = missing = empty = not_json = 0
while not os.path.exists(stop):
    for path in paths:
        try:
            with open(path, "rb") as file:
                data = file.read()
        except FileNotFoundError:
            missing += 1
            continue
        reads += 1
        if not data:
            empty += 1
        elif path.endswith(".json"):
            try:
                json.loads(data)
            except ValueError:
                not_json += 1
        seen[path].add(data.decode("latin-1"))
    time.sleep(0.001)
print(json.dumps({
    "reads": reads, "missing": missing, "empty": empty, "not_json": not_json,
    "seen": {path: sorted(contents) for path, contents in seen.items()},
}))
"""

REFRESHES = 1_000


async def test_case_12_a_reader_process_never_sees_a_missing_empty_or_torn_file(
    shm_dir: Path,
    key_file: Path,
    rsa_pem: bytes,
    make_harness: MakeHarness,
    tmp_path: Path,
) -> None:
    """case-12: another process reads aws-token, gcp-token and
    gcp-credentials.json on tmpfs with open/read/close every millisecond while the
    sidecar refreshes each token 1,000 times. No read fails with ENOENT or
    returns nothing; every read is a token the sidecar wrote, whole, with three
    base64url parts and a signature that verifies against the JWKS; every read
    of gcp-credentials.json parses as JSON."""
    config = validate(
        key_mode_settings(
            shm_dir, key_file, gcp_identity="bq-reader", gcp_audience=GCP_AUDIENCE
        )
    )
    harness = make_harness(config)
    aws, gcp = harness.refresher.states
    written: set[str] = set()
    for state in (aws, gcp):
        assert await harness.refresher.refresh(state)
        assert state.token is not None
        written.add(state.token.value)

    paths = [str(shm_dir / name) for name in ALL_FILES]
    stop = tmp_path / "stop"
    reader = await asyncio.create_subprocess_exec(
        sys.executable, "-c", READER, str(stop), *paths, stdout=subprocess.PIPE
    )
    try:
        await asyncio.sleep(0.2)  # the reader is reading
        for _ in range(REFRESHES):
            harness.clock.advance(1)
            for state in (aws, gcp):
                assert await harness.refresher.refresh(state)
                assert state.token is not None
                written.add(state.token.value)
    finally:
        stop.touch()
        output, _ = await asyncio.wait_for(reader.communicate(), 30)
    report = json.loads(output)

    assert len(written) == 2 * (REFRESHES + 1)
    assert report["reads"] > 1_000
    assert (report["missing"], report["empty"], report["not_json"]) == (0, 0, 0)
    credentials = (shm_dir / "gcp-credentials.json").read_text()
    assert report["seen"][str(shm_dir / "gcp-credentials.json")] == [credentials]
    for name, audience in (
        ("aws-token", "sts.amazonaws.com"),
        ("gcp-token", GCP_AUDIENCE),
    ):
        seen = report["seen"][str(shm_dir / name)]
        assert len(seen) > 20, f"the reader caught too few {name} refreshes"
        assert set(seen) <= written, "a read returned bytes that were never written"
        for token in seen:
            assert token.count(".") == 2
            verified(token, rsa_pem, audience)


# --- case-13 ------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["key", "issuer-stalled"])
def test_case_13_sigterm_ends_the_sidecar_with_0_at_once_whatever_is_open(
    started: Any,
    key_file: Path,
    shm_dir: Path,
    tls_files: TlsFiles,
    tmp_path: Path,
    mode: str,
) -> None:
    """case-13: on SIGTERM the sidecar exits 0 within a second or two, far
    inside terminationGracePeriodSeconds, so a Job's pod completes: probe
    connections that are idle, half sent or unread do not hold it up, and
    neither does a request to an issuer that never answers."""
    listen = f"127.0.0.1:{free_port()}"
    settings = {
        "token_dir": str(shm_dir),
        "aws_identity": "db-migrator",
        "listen": listen,
    }
    silent = socket.socket()  # accepts connections, never says a word
    silent.bind(("127.0.0.1", 0))
    silent.listen()
    if mode == "key":
        settings |= {
            "mode": "key",
            "issuer": ISSUER,
            "key_file": str(key_file),
            "project": "payments",
            "namespace": "payments",
        }
    else:
        sa_token = tmp_path / "sa-token"
        sa_token.write_text("projected")
        settings |= {
            "mode": "issuer",
            "issuer_token_url": f"https://127.0.0.1:{silent.getsockname()[1]}/token",
            "issuer_ca_file": str(tls_files.ca),
            "sa_token_file": str(sa_token),
        }
    stderr_file = tmp_path / "stderr.log"
    process = started(stderr_file, **settings)
    clients: list[socket.socket] = []
    try:
        ready = 200 if mode == "key" else 503
        wait_for(lambda: http_get(f"http://{listen}/readyz")[0] == ready, timeout=10)
        host, port = listen.split(":")
        for request in (b"", b"", b"GET /readyz HTTP/1.1\r\n", b"GET /metr"):
            client = socket.create_connection((host, int(port)))
            client.sendall(request)
            clients.append(client)
        unread = socket.create_connection((host, int(port)))
        unread.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")  # never read
        clients.append(unread)
        time.sleep(0.3)

        signalled = time.monotonic()
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0
        assert time.monotonic() - signalled < 2.0
        for client in clients[:4]:
            client.settimeout(2)
            with suppress(ConnectionResetError):
                assert client.recv(100) == b""
    finally:
        silent.close()
        for client in clients:
            client.close()
    assert "stopping on request" in stderr_file.read_text()


# --- case-14 ------------------------------------------------------------------


async def test_case_14_ready_only_once_both_gcp_files_hold_what_apps_need(
    make_config: Callable[..., Config],
    make_harness: MakeHarness,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """case-14: the startup probe (/readyz) fails while gcp-credentials.json or
    gcp-token is missing or empty and while the signer is unavailable, which the
    sidecar logs and counts; it passes once both files are written and the token
    is valid, and then the credential configuration names the token file."""
    config = make_config(
        aws_identity="",
        gcp_identity="config-reader",
        gcp_audience=GCP_AUDIENCE,
        gcp_service_account="config-reader@project-a.iam.gserviceaccount.com",
    )
    source = SwitchableSource(key_source(config))
    harness = make_harness(config, source=source)
    probes = probes_for(harness)
    token_dir = config.token_dir

    status, body = probe(probes, "/readyz")
    assert status == 503
    assert set(body["files"]) == set(GCP_FILES)
    assert not any(entry["ok"] for entry in body["files"].values())

    source.failing = True  # the signer is unavailable before the pod starts
    for _ in range(3):
        harness.clock.now = max(harness.clock.now, harness.state("gcp").next_attempt)
        await harness.tick(0)
        status, body = probe(probes, "/readyz")
        assert status == 503
        assert body["files"]["gcp-token"]["lastFailure"] == "signing"
    assert harness.failures("gcp", "signing") >= 1
    assert (
        "gcp token refresh for identity config-reader failed (signing)" in caplog.text
    )
    assert not any((token_dir / name).exists() for name in GCP_FILES)

    # The credential configuration is written, but not the token: still failing.
    source.failing = False
    (token_dir / "gcp-token").mkdir()  # a rename over a directory fails
    harness.clock.now = harness.state("gcp").next_attempt
    await harness.tick(0)
    status, body = probe(probes, "/readyz")
    assert status == 503
    assert body["files"]["gcp-credentials.json"]["ok"] is True
    assert body["files"]["gcp-token"]["ok"] is False

    (token_dir / "gcp-token").rmdir()
    harness.clock.now = harness.state("gcp").next_attempt
    await harness.tick(0)
    status, body = probe(probes, "/readyz")
    assert status == 200
    assert all(entry["ok"] for entry in body["files"].values())
    for name in GCP_FILES:
        assert (token_dir / name).stat().st_size > 0
    credentials = json.loads((token_dir / "gcp-credentials.json").read_text())
    assert credentials["credential_source"]["file"] == str(token_dir / "gcp-token")
    assert file_claims(token_dir / "gcp-token")["exp"] > harness.clock.now + 5


async def test_case_14_an_unavailable_signer_keeps_readyz_failing_until_it_recovers(
    fake_issuer: FakeIssuer, tls_files: TlsFiles, tmp_path: Path
) -> None:
    """case-14, as a process in issuer mode (the default in the manifests):
    while the issuer cannot sign (503), the sidecar keeps running and retrying,
    /readyz fails, the failure counter is at least 1 and the log says why; no
    file is written, so no app container can start. Once the issuer signs
    again, the sidecar becomes ready without a restart."""
    fake_issuer.answers[:] = [(503, {"error": "identities not synced yet"})] * 10_000
    sa_token = tmp_path / "sa-token"
    sa_token.write_text("projected")
    token_dir = tmp_path / "tokens"
    port = free_port()
    stderr_file = tmp_path / "stderr.log"
    env = subprocess_env(
        mode="issuer",
        issuer_token_url=fake_issuer.url,
        issuer_ca_file=str(tls_files.ca),
        sa_token_file=str(sa_token),
        token_dir=str(token_dir),
        gcp_identity="config-reader",
        gcp_audience=GCP_AUDIENCE,
        listen=f"127.0.0.1:{port}",
    )
    with stderr_file.open("wb") as stderr:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "sidecar", cwd=REPO_ROOT, env=env,
            stdout=subprocess.DEVNULL, stderr=stderr,
        )  # fmt: skip
    try:
        for _ in range(100):
            if len(fake_issuer.requests) >= 2:
                break
            await asyncio.sleep(0.05)
        readyz = await get(port, "/readyz")
        metrics = (await get(port, "/metrics")).body.decode()
        assert readyz.status == 503
        assert (
            readyz.json()["files"]["gcp-token"]["lastFailure"] == "issuer_unreachable"
        )
        assert (
            scraped(metrics, "refresh_failures_total", reason="issuer_unreachable") >= 1
        )
        assert scraped(metrics, "token_valid") == 0
        assert not token_dir.exists() or not any(token_dir.iterdir())
        assert "the issuer answered 503 (identities not synced yet)" in (
            stderr_file.read_text()
        )

        fake_issuer.answers.clear()  # the issuer can sign again
        for _ in range(200):
            if (await get(port, "/readyz")).status == 200:
                break
            await asyncio.sleep(0.05)
        assert (await get(port, "/readyz")).status == 200
        assert process.returncode is None
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), 10) == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert (token_dir / "gcp-token").read_text() in fake_issuer.issued


@pytest.mark.parametrize("mode", ["key", "issuer"])
async def test_case_14_the_first_tokens_are_on_disk_within_2_seconds_of_start(
    fake_issuer: FakeIssuer,
    tls_files: TlsFiles,
    key_file: Path,
    tmp_path: Path,
    mode: str,
) -> None:
    """case-14: under normal conditions the first token is written within 2 s of
    the sidecar process starting (process start to file mtime)."""
    token_dir = tmp_path / "tokens"
    common = {
        "token_dir": str(token_dir),
        "aws_identity": "s3-reader",
        "gcp_identity": "config-reader",
        "gcp_audience": GCP_AUDIENCE,
        "listen": f"127.0.0.1:{free_port()}",
    }
    if mode == "key":
        extra = {
            "mode": "key",
            "issuer": ISSUER,
            "key_file": str(key_file),
            "project": "team-c",
            "namespace": "team-c",
        }
    else:
        sa_token = tmp_path / "sa-token"
        sa_token.write_text("projected")
        extra = {
            "mode": "issuer",
            "issuer_token_url": fake_issuer.url,
            "issuer_ca_file": str(tls_files.ca),
            "sa_token_file": str(sa_token),
        }
    wanted = [token_dir / name for name in ALL_FILES]
    launched = time.time()
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "sidecar", cwd=REPO_ROOT,
        env=subprocess_env(**common, **extra),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        for _ in range(200):
            if all(path.exists() for path in wanted):
                break
            await asyncio.sleep(0.02)
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), 10) == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    for path in wanted:
        assert path.stat().st_mtime - launched < 2.0, path.name


# --- case-23 ------------------------------------------------------------------


async def test_case_23_tokens_pass_strict_verifiers_through_skew_steps_and_jumps(
    make_config: Callable[..., Config], make_harness: MakeHarness, rsa_pem: bytes
) -> None:
    """case-23, on virtual time, with the documented allowance A = 30 s:
    iat == nbf == S - A and exp == S + 3600 for signing time S; a zero-leeway
    verifier accepts the token from S - A to exp - 1 and rejects it at S + 3700;
    no token lives longer than 3600 + A. A clock 600 s fast and then stepped
    back gets a new token within one tick, valid at true time; a forward jump
    of 7200 s gets one within one tick of resuming, and no expired token stays
    in the file longer than a tick. The expiry gauge always equals the file's
    exp."""
    config = make_config(aws_expiration_seconds="3600")
    harness = make_harness(config)
    path = config.token_dir / "aws-token"
    tick = config.tick_seconds
    A = CLOCK_SKEW_SECONDS

    def gauge_matches_file() -> None:
        gauge = harness.sample("token_expiry_timestamp_seconds", provider="aws")
        assert gauge == file_claims(path)["exp"]

    # The claims and a strict verifier's view of them.
    signed_at = int(harness.clock.now)
    await harness.tick(0)
    claims = verified(path.read_text(), rsa_pem)
    assert claims["iat"] == claims["nbf"] == signed_at - A
    assert claims["exp"] == signed_at + 3600
    assert claims["exp"] - claims["iat"] <= 3600 + A
    for d in (-A, 0, 30, 60, claims["exp"] - signed_at - 1):
        assert strictly_valid_at(claims, signed_at + d), d
    assert not strictly_valid_at(claims, signed_at + 3700)
    gauge_matches_file()

    # The node's clock runs 600 s fast; NTP steps it back between refreshes.
    harness.clock.jump_wall(600)
    harness.clock.now = harness.state().next_attempt
    await harness.tick(0)
    fast = verified(path.read_text(), rsa_pem)
    harness.clock.advance(5)
    harness.clock.jump_wall(-600)
    stepped_at = harness.clock.now
    assert stepped_at < fast["iat"]
    await run_loop_until(harness, stepped_at + tick)
    corrected = verified(path.read_text(), rsa_pem)
    assert corrected["jti"] != fast["jti"]
    assert corrected["iat"] + A - stepped_at <= tick
    assert strictly_valid_at(corrected, stepped_at)
    gauge_matches_file()

    # Suspended, the node's clock jumps 7200 s; then the process resumes.
    harness.clock.jump_wall(7200)
    resumed_at = harness.clock.now
    assert file_claims(path)["exp"] <= resumed_at
    await run_loop_until(harness, resumed_at + tick)
    resumed = verified(path.read_text(), rsa_pem)
    assert resumed["iat"] + A - resumed_at <= tick
    assert strictly_valid_at(resumed, harness.clock.now)
    gauge_matches_file()

    # On for two more lifetimes: the file never holds an expired token for
    # longer than a tick.
    end = harness.clock.now + 2 * 3600
    while harness.clock.now < end:
        await harness.tick()
        assert file_claims(path)["exp"] > harness.clock.now - tick
        gauge_matches_file()


# --- case-24 ------------------------------------------------------------------


@pytest.mark.parametrize("jitter", [0.0, 0.5, 0.999])
@pytest.mark.parametrize("outage_seconds", [30, 90])
async def test_case_24_refresh_early_retry_often_report_expiry_and_recover(
    make_config: Callable[..., Config],
    make_harness: MakeHarness,
    jitter: float,
    outage_seconds: int,
) -> None:
    """case-24 on virtual time: 60 s tokens for 240 s, observed every 0.25 s,
    with the signer down from 70 s for 30 s (the token may outlive the outage,
    depending on where the jitter put the refreshes) or 90 s (it cannot). While the signer is healthy no reader sees a token with
    less than 20% of 60 s (less 1 s) left; each success rewrites the file, is
    counted once and moves the last-success time on. During the outage the file
    keeps the last good token, each failed attempt is counted, and attempts come
    at least every 6 s (10% of the lifetime). The valid-token gauge is 1 while
    the file's token is unexpired and 0 from the moment it has expired, when
    /healthz fails too. After the outage a token is written within one retry
    interval, without a restart."""
    lifetime = 60
    step = 0.25
    config = make_config(aws_expiration_seconds=str(lifetime))
    source = SwitchableSource(key_source(config))
    harness = make_harness(config, source=source, jitter=jitter)
    probes = probes_for(harness)
    path = config.token_dir / "aws-token"
    start = harness.clock.now
    outage = (70, 70 + outage_seconds)
    successes, mtime, last_success = 0, 0, 0.0
    failed_at: list[float] = []
    recovered_at: float | None = None
    expired_seen = False

    while harness.clock.now < start + 240:
        elapsed = harness.clock.now - start
        source.failing = outage[0] <= elapsed < outage[1]
        failures_before = harness.failures("aws", "signing")
        await harness.refresher.refresh_due()
        harness.refresher.last_progress = harness.clock.mono
        now = harness.clock.now
        if harness.failures("aws", "signing") > failures_before:
            failed_at.append(elapsed)
        claims = file_claims(path)  # never missing or empty
        if path.stat().st_mtime_ns != mtime:
            mtime = path.stat().st_mtime_ns
            successes += 1
            success_time = harness.sample(
                "last_success_timestamp_seconds", provider="aws"
            )
            assert success_time is not None and success_time > last_success
            last_success = success_time
            if elapsed >= outage[1] and recovered_at is None:
                recovered_at = elapsed
        if elapsed < outage[0] or (
            recovered_at is not None and elapsed >= recovered_at
        ):
            assert claims["exp"] - now >= 0.2 * lifetime - 1, elapsed
        expired = claims["exp"] <= now
        expired_seen |= expired
        assert harness.sample("token_valid", provider="aws") == (0 if expired else 1)
        assert probe(probes, "/healthz")[0] == (503 if expired else 200), elapsed
        harness.clock.advance(step)

    if outage_seconds == 90:
        assert expired_seen
    assert recovered_at is not None
    assert recovered_at - outage[1] <= 0.1 * lifetime + step
    assert harness.failures("aws", "signing") == len(failed_at) > 0
    assert harness.attempts("aws") == successes + len(failed_at)
    gaps = [b - a for a, b in itertools.pairwise(failed_at)]
    assert all(gap <= 0.1 * lifetime + step for gap in gaps)


async def test_case_24_the_signer_outage_scenario_as_a_process(
    started: Any, key_file: Path, rsa_pem: bytes, shm_dir: Path, tmp_path: Path
) -> None:
    """case-24 against a real process, compressed to 10 s tokens: the signer
    breaks until the token in the file has expired; /healthz and the gauge say
    so, the file keeps the last token, and mending the signer brings a fresh
    token without a restart. (test_sidecar_sdk runs boto3 through the same.)"""
    listen = f"127.0.0.1:{free_port()}"
    base = f"http://{listen}"
    process = started(
        tmp_path / "stderr.log",
        mode="key",
        issuer=ISSUER,
        key_file=str(key_file),
        token_dir=str(shm_dir),
        aws_identity="notebook-s3",
        aws_expiration_seconds="10",
        project="analytics",
        namespace="analytics",
        listen=listen,
    )
    token_path = shm_dir / "aws-token"
    wait_for(lambda: http_get(f"{base}/readyz")[0] == 200, timeout=10)
    break_key(key_file)
    last = wait_for(
        lambda: (
            (t := token_path.read_text())
            and file_claims(token_path)["exp"] < time.time()
            and t
        ),
        timeout=20,
    )
    wait_for(lambda: http_get(f"{base}/healthz")[0] == 503, timeout=3)
    metrics = http_get(f"{base}/metrics")[1].decode()
    assert scraped(metrics, "token_valid") == 0
    assert scraped(metrics, "refresh_failures_total", reason="signing") >= 1
    assert token_path.read_text() == last

    restore_key(key_file, rsa_pem)
    mended = time.monotonic()
    wait_for(lambda: http_get(f"{base}/healthz")[0] == 200, timeout=10)
    assert time.monotonic() - mended < 3
    assert verified(token_path.read_text(), rsa_pem)["exp"] > time.time()
    assert process.poll() is None
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=10) == 0
