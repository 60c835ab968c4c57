"""`python -m sidecar` as a real process: lifecycle, probes, signals, logs."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import subprocess
import time
from contextlib import suppress
from pathlib import Path
from typing import Any

import jwt
import pytest
from prometheus_client.parser import text_string_to_metric_families

from oidc_tokens.claims import unverified_claims
from oidc_tokens.keys import jwks, load_public_key
from tests.sidecar.sidecar_helpers import (
    GCP_AUDIENCE,
    ISSUER,
    REPO_ROOT,
    FakeIssuer,
    TlsFiles,
    free_port,
    get,
    http_get,
    subprocess_env,
    wait_for,
)

SIDECAR = ["-m", "sidecar"]


@pytest.fixture
def key_mode(shm_dir: Path, key_file: Path) -> dict[str, str]:
    return {
        "mode": "key",
        "issuer": ISSUER,
        "key_file": str(key_file),
        "token_dir": str(shm_dir),
        "aws_identity": "s3-reader",
        "project": "team-a",
        "namespace": "team-a",
        "pod_name": "app-7d5b9",
        "service_account": "app",
        "listen": f"127.0.0.1:{free_port()}",
    }


def verify(
    token: str, pem: bytes, audience: str = "sts.amazonaws.com"
) -> dict[str, Any]:
    (jwk,) = jwks([load_public_key(pem)])["keys"]
    assert jwt.get_unverified_header(token)["kid"] == jwk["kid"]
    return jwt.decode(
        token, jwt.PyJWK(jwk), algorithms=["RS256"], audience=audience, issuer=ISSUER
    )


def scraped(url: str, name: str) -> float:
    """The value of the sidecar's aws sample `name` at `url`."""
    text = http_get(url)[1].decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == f"workload_identity_sidecar_{name}":
                return sample.value
    raise AssertionError(f"{name} not scraped")


def expiry_matches_file(base: str, token_path: Path) -> bool:
    """The expiry gauge equals exp of the file's token (retry if a refresh raced)."""
    before = token_path.read_text()
    gauge = scraped(f"{base}/metrics", "token_expiry_timestamp_seconds")
    if token_path.read_text() != before:
        return False
    assert gauge == unverified_claims(before)["exp"]
    return True


def imported_modules(stderr: str, *, top_level: bool = True) -> set[str]:
    """Modules (by default their top-level packages) from `python -X importtime`
    output."""
    names = set()
    for line in stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            name = line.rsplit("|", 1)[1].strip()
            names.add(name.split(".")[0] if top_level else name)
    return names


UNUSED_HEAVY = {
    "aiohttp",
    "jwt",
    "http.server",
    "wsgiref",
    "urllib.request",
    "prometheus_client.exposition",
    "datetime",
    "shutil",
    "tempfile",
}
"""Modules that would cost every pod memory and start-up time for nothing."""


def test_the_sidecar_process_writes_refreshes_serves_and_stops_on_sigterm(
    started: Any, key_mode: dict[str, str], rsa_pem: bytes, tmp_path: Path
) -> None:
    stderr_file = tmp_path / "stderr.log"
    token_path = Path(key_mode["token_dir"]) / "aws-token"
    base = f"http://{key_mode['listen']}"
    launched = time.time()
    process = started(stderr_file, aws_expiration_seconds="10", **key_mode)

    wait_for(token_path.exists, timeout=10)
    # case-14 asks for 2 s on an idle node; the slack is for busy test machines.
    assert token_path.stat().st_mtime - launched < 5.0, "first token took too long"
    _, body = wait_for(
        lambda: (r := http_get(f"{base}/readyz"))[0] == 200 and r, timeout=10
    )
    assert json.loads(body)["files"]["aws-token"]["ok"] is True
    first = token_path.read_text()
    claims = verify(first, rsa_pem)
    assert claims["sub"] == "s3-reader:team-a:team-a:app"
    assert claims["exp"] - claims["iat"] == 10 + 30
    assert token_path.stat().st_mode & 0o777 == 0o644

    second = wait_for(lambda: (t := token_path.read_text()) != first and t, timeout=15)
    verify(second, rsa_pem)
    assert http_get(f"{base}/healthz")[0] == 200
    assert scraped(f"{base}/metrics", "token_valid") == 1
    wait_for(lambda: expiry_matches_file(base, token_path), timeout=10)

    signalled = time.monotonic()
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=10) == 0
    assert time.monotonic() - signalled < 3
    assert token_path.exists()

    stderr = stderr_file.read_text()
    assert "stopping on request" in stderr
    assert "eyJ" not in stderr
    for token in (first, second):
        assert token not in stderr
        assert token.split(".")[2] not in stderr


def test_sigint_also_stops_the_sidecar_cleanly(
    started: Any, key_mode: dict[str, str], tmp_path: Path
) -> None:
    process = started(tmp_path / "stderr.log", **key_mode)
    wait_for(
        lambda: http_get(f"http://{key_mode['listen']}/readyz")[0] == 200, timeout=10
    )
    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=10) == 0


def test_oneshot_writes_the_first_tokens_and_exits_0(
    started: Any, key_mode: dict[str, str], rsa_pem: bytes, tmp_path: Path
) -> None:
    process = started(
        tmp_path / "stderr.log",
        oneshot="true",
        gcp_identity="bq-reader",
        gcp_audience=GCP_AUDIENCE,
        **key_mode,
    )
    assert process.wait(timeout=20) == 0
    token_dir = Path(key_mode["token_dir"])
    verify((token_dir / "aws-token").read_text(), rsa_pem)
    verify((token_dir / "gcp-token").read_text(), rsa_pem, audience=GCP_AUDIENCE)
    credentials = json.loads((token_dir / "gcp-credentials.json").read_text())
    assert credentials["credential_source"]["file"] == str(token_dir / "gcp-token")


def test_oneshot_exits_1_with_the_reason_when_the_issuer_is_down(
    started: Any, tmp_path: Path, tls_files: TlsFiles
) -> None:
    sa_token = tmp_path / "sa-token"
    sa_token.write_text("projected")
    stderr_file = tmp_path / "stderr.log"
    process = started(
        stderr_file,
        oneshot="true",
        mode="issuer",
        issuer_token_url=f"https://127.0.0.1:{free_port()}/token",
        issuer_ca_file=str(tls_files.ca),
        sa_token_file=str(sa_token),
        token_dir=str(tmp_path / "tokens"),
        aws_identity="s3-reader",
    )
    assert process.wait(timeout=30) == 1
    stderr = stderr_file.read_text()
    assert (
        "could not write the first aws token for identity s3-reader after 5" in stderr
    )
    assert "issuer_unreachable" in stderr
    assert not (tmp_path / "tokens" / "aws-token").exists()


def test_an_invalid_configuration_exits_2_with_every_problem(
    started: Any, tmp_path: Path
) -> None:
    stderr_file = tmp_path / "stderr.log"
    process = started(stderr_file, mode="key", file_mode="0666")
    assert process.wait(timeout=10) == 2
    stderr = stderr_file.read_text()
    assert "--issuer / WI_ISSUER: is required" in stderr
    assert "--file-mode / WI_FILE_MODE:" in stderr
    assert "no provider configured" in stderr


def test_an_unusable_key_file_stops_the_start_with_what_to_do(
    started: Any, key_mode: dict[str, str], tmp_path: Path
) -> None:
    stderr_file = tmp_path / "stderr.log"
    key_mode["key_file"] = str(tmp_path / "absent.pem")
    process = started(stderr_file, **key_mode)
    assert process.wait(timeout=10) == 1
    assert "--key-file / WI_KEY_FILE" in stderr_file.read_text()


def test_a_busy_probe_port_stops_the_start_with_what_to_do(
    started: Any, key_mode: dict[str, str], tmp_path: Path
) -> None:
    stderr_file = tmp_path / "stderr.log"
    with socket.socket() as occupant:
        occupant.bind(("127.0.0.1", 0))
        occupant.listen()
        key_mode["listen"] = f"127.0.0.1:{occupant.getsockname()[1]}"
        process = started(stderr_file, **key_mode)
        assert process.wait(timeout=10) == 1
    stderr = stderr_file.read_text()
    assert "cannot start: cannot listen on 127.0.0.1:" in stderr
    assert "--listen / WI_LISTEN" in stderr
    assert "Traceback" not in stderr


def test_json_logs_carry_the_pod_on_every_line(
    started: Any, key_mode: dict[str, str], tmp_path: Path
) -> None:
    stderr_file = tmp_path / "stderr.log"
    process = started(stderr_file, oneshot="true", log_format="json", **key_mode)
    assert process.wait(timeout=20) == 0
    lines = [json.loads(line) for line in stderr_file.read_text().splitlines()]
    assert lines
    for entry in lines:
        assert entry["pod"] == "team-a/app-7d5b9"
        assert entry["serviceAccount"] == "app"
        assert {"time", "level", "logger", "message"} <= set(entry)
    assert any("wrote the aws token" in entry["message"] for entry in lines)


async def test_issuer_mode_never_loads_cryptography_or_anything_heavy(
    fake_issuer: FakeIssuer, tls_files: TlsFiles, tmp_path: Path
) -> None:
    sa_token = tmp_path / "sa-token"
    sa_token.write_text("projected")
    port = free_port()
    stderr_file = tmp_path / "stderr.log"
    env = subprocess_env(
        mode="issuer",
        issuer_token_url=fake_issuer.url,
        issuer_ca_file=str(tls_files.ca),
        sa_token_file=str(sa_token),
        token_dir=str(tmp_path / "tokens"),
        aws_identity="s3-reader",
        gcp_identity="bq-reader",
        gcp_audience=GCP_AUDIENCE,
        listen=f"127.0.0.1:{port}",
    )
    with stderr_file.open("wb") as stderr:
        process = await asyncio.create_subprocess_exec(
            __import__("sys").executable,
            "-X",
            "importtime",
            *SIDECAR,
            cwd=REPO_ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
    try:
        for _ in range(200):
            with suppress(OSError):
                if (await get(port, "/readyz")).status == 200:
                    break
            await asyncio.sleep(0.05)
        else:
            pytest.fail("the issuer-mode sidecar never became ready")
        metrics = (await get(port, "/metrics")).body.decode()
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), 10) == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()

    assert len(fake_issuer.requests) >= 2
    assert (tmp_path / "tokens" / "aws-token").read_text() in fake_issuer.issued
    assert 'token_fetch_duration_seconds_count{mode="issuer"}' in metrics
    stderr = stderr_file.read_text()
    assert {"sidecar", "_ssl", "prometheus_client"} <= imported_modules(stderr)
    assert "cryptography" not in imported_modules(stderr)
    assert not UNUSED_HEAVY & imported_modules(stderr, top_level=False)


def test_key_mode_loads_cryptography_which_shows_the_check_above_works(
    started: Any, key_mode: dict[str, str], tmp_path: Path
) -> None:
    """And nothing else it does not use: no TLS, no JWT library."""
    stderr_file = tmp_path / "stderr.log"
    process = started(
        stderr_file, python_flags=("-X", "importtime"), oneshot="true", **key_mode
    )
    assert process.wait(timeout=20) == 0
    stderr = stderr_file.read_text()
    assert "cryptography" in imported_modules(stderr)
    # importtime lists the refused `import ssl` too; OpenSSL's is `_ssl`.
    assert "_ssl" not in imported_modules(stderr)
    assert not UNUSED_HEAVY & imported_modules(stderr, top_level=False)
