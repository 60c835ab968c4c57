"""What the webhook and the sidecar expose: modern TLS only, no plain HTTP,
and keys, tokens and the state directory with the modes they must have
whatever the umask."""

from __future__ import annotations

import os
import socket
import ssl
import stat
import sys
import warnings
from pathlib import Path

import pytest

from tests.reliability.support import (
    Figures,
    Processes,
    clean_env,
    free_port,
    wait_for,
)
from tests.reliability.webhook_rig import Webhook, start_webhook, write_rules
from webhook.issuer import write_new_key

GCP_AUDIENCE = (
    "//iam.googleapis.com/projects/123456789012/locations/global/"
    "workloadIdentityPools/cluster-pool/providers/cluster-oidc"
)

AEAD_WITH_FORWARD_SECRECY = ("ECDHE-", "-GCM-", "-CHACHA20-")


def handshake(
    port: int, *, version: ssl.TLSVersion, ciphers: str | None = None
) -> str | None:
    """The cipher agreed on, or None when the server refused the handshake."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # TLS 1.0/1.1 on purpose
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        context.minimum_version = version
        context.maximum_version = version
        context.set_ciphers(ciphers or "ALL:@SECLEVEL=0")
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        try:
            with context.wrap_socket(raw) as tls:
                agreed = tls.cipher()
                return agreed[0] if agreed else None
        except (ssl.SSLError, ConnectionResetError):
            return None


@pytest.fixture
def webhook(processes: Processes, tmp_path: Path) -> Webhook:
    return start_webhook(processes, tmp_path)


def test_the_webhook_speaks_tls_1_2_and_1_3_only_with_forward_secret_aead_ciphers(
    webhook: Webhook, figures: Figures
) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        old = (ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1)
    assert [handshake(webhook.port, version=v) for v in old] == [None, None]
    assert handshake(webhook.port, version=ssl.TLSVersion.TLSv1_3) is not None

    offered = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    offered.set_ciphers("ALL:@SECLEVEL=0")
    suites = [c["name"] for c in offered.get_ciphers() if c["protocol"] == "TLSv1.2"]
    accepted = [
        suite
        for suite in suites
        if handshake(
            webhook.port, version=ssl.TLSVersion.TLSv1_2, ciphers=f"{suite}:@SECLEVEL=0"
        )
    ]
    assert accepted
    for suite in accepted:
        assert suite.startswith("ECDHE-") and ("-GCM-" in suite or "CHACHA20" in suite)
    figures.record(
        "transport",
        tls_versions_refused=["TLSv1", "TLSv1.1"],
        tls12_suites_tried=len(suites),
        tls12_suites_accepted=accepted,
    )


def test_plain_http_on_the_tls_port_gets_no_http_answer(webhook: Webhook) -> None:
    for path in ("/mutate", "/token", "/healthz", "/openid/v1/jwks"):
        with socket.create_connection(("127.0.0.1", webhook.port), timeout=10) as plain:
            plain.sendall(
                f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                "Content-Type: application/json\r\nContent-Length: 2\r\n\r\n{}".encode()
            )
            received = b""
            try:
                while chunk := plain.recv(4096):
                    received += chunk
            except ConnectionResetError:
                pass
        assert not received.startswith(b"HTTP/"), path
        assert b"{" not in received, path


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["-m", "webhook", "serve", "--identities", "x.yaml", "--state-dir", "state",
             "--issuer-url", "http://127.0.0.1:8443"],
            "must start with https://",
        ),
        (
            ["-m", "sidecar", "--mode", "issuer", "--aws-identity", "payments-s3",
             "--issuer-token-url", "http://127.0.0.1:8443/token"],
            "https",
        ),
    ],
)  # fmt: skip
def test_an_issuer_address_over_plain_http_is_refused_at_start(
    processes: Processes, tmp_path: Path, argv: list[str], message: str
) -> None:
    (tmp_path / "x.yaml").write_text("")
    argv = [str(tmp_path / a) if a in ("x.yaml", "state") else a for a in argv]
    process = processes.python("refused", *argv, env=clean_env(HOME=str(tmp_path)))
    assert process.popen.wait(timeout=30) == 2
    assert message in process.log()


# --- file modes ----------------------------------------------------------------


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _umask(value: int) -> object:
    def apply() -> None:
        os.umask(value)

    return apply


@pytest.mark.parametrize("umask", [0o000, 0o077])
def test_keys_and_the_state_directory_get_their_modes_whatever_the_umask(
    processes: Processes, tmp_path: Path, umask: int, figures: Figures
) -> None:
    state = tmp_path / "state"
    identities, _ = write_rules(tmp_path)
    server = processes.start(
        "webhook",
        [sys.executable, "-m", "webhook", "serve", "--identities", str(identities),
         "--shutdown-delay", "0",
         "--state-dir", str(state), "--listen", f"127.0.0.1:{free_port()}",
         "--metrics-listen", f"127.0.0.1:{free_port()}"],
        preexec_fn=_umask(umask),  # type: ignore[arg-type]
    )  # fmt: skip
    wait_for(
        lambda: "serving admission" in server.log(), timeout=30, what="the webhook"
    )
    assert server.terminate() == 0
    key = tmp_path / "keygen.pem"
    keygen = processes.start(
        "keygen",
        [sys.executable, "-m", "webhook", "issuer", "keygen", "--out", str(key)],
        preexec_fn=_umask(umask),  # type: ignore[arg-type]
    )
    assert keygen.popen.wait(timeout=30) == 0
    modes = {
        "state dir": _mode(state),
        "signing-key.pem": _mode(state / "signing-key.pem"),
        "tls.key": _mode(state / "tls.key"),
        "keygen key": _mode(key),
        "tls.crt": _mode(state / "tls.crt"),
    }
    assert modes["state dir"] == 0o700
    assert modes["signing-key.pem"] == modes["tls.key"] == modes["keygen key"] == 0o600
    assert not modes["tls.crt"] & 0o022  # public, but no one else may replace it
    figures.record(
        "file modes",
        **{f"umask_{umask:03o}": {k: f"{v:04o}" for k, v in modes.items()}},
    )


@pytest.mark.parametrize(
    ("umask", "file_mode"), [(0o000, ""), (0o077, ""), (0o000, "0640")]
)
def test_token_files_get_the_configured_mode_whatever_the_umask(
    processes: Processes, tmp_path: Path, umask: int, file_mode: str, figures: Figures
) -> None:
    key = tmp_path / "key.pem"
    write_new_key(str(key))
    tokens = tmp_path / "tokens"
    settings = {
        "WI_MODE": "key", "WI_ONESHOT": "true", "WI_ISSUER": "https://issuer.reliability.test",
        "WI_KEY_FILE": str(key), "WI_TOKEN_DIR": str(tokens),
        "WI_AWS_IDENTITY": "payments-s3", "WI_GCP_IDENTITY": "payments-bq",
        "WI_GCP_AUDIENCE": GCP_AUDIENCE, "WI_PROJECT": "payments",
        "WI_NAMESPACE": "payments", "WI_FILE_MODE": file_mode,
    }  # fmt: skip
    oneshot = processes.start(
        "sidecar",
        [sys.executable, "-m", "sidecar"],
        env=clean_env(**settings),
        preexec_fn=_umask(umask),  # type: ignore[arg-type]
    )
    assert oneshot.popen.wait(timeout=30) == 0, oneshot.log()
    wanted = int(file_mode or "0644", 8)
    written = {path.name: _mode(path) for path in tokens.iterdir()}
    assert written == dict.fromkeys(
        ("aws-token", "gcp-token", "gcp-credentials.json"), wanted
    )
    figures.record(
        "file modes",
        **{f"tokens_umask_{umask:03o}_mode_{file_mode or 'default'}": f"{wanted:04o}"},
    )
