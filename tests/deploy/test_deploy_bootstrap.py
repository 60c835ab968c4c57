"""deploy/components/bootstrap/bootstrap.py against a fake API server on
127.0.0.1, and its certificate logic directly."""

from __future__ import annotations

import base64
import copy
import datetime as dt
import importlib.util
import itertools
import json
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import ModuleType
from typing import Any

import jsonpatch
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from deploy_support import (
    DEPLOY,
    SERVICE,
    SIGNING_SECRET,
    TLS_SECRET,
    WEBHOOK_NAMESPACE,
    Obj,
    only,
    render,
)

SCRIPT = DEPLOY / "components" / "bootstrap" / "bootstrap.py"
TOKEN = "job-service-account-token"
WEBHOOK = "workload-identity"
DNS_NAMES = {
    SERVICE,
    f"{SERVICE}.{WEBHOOK_NAMESPACE}",
    f"{SERVICE}.{WEBHOOK_NAMESPACE}.svc",
    f"{SERVICE}.{WEBHOOK_NAMESPACE}.svc.cluster.local",
}
SECRET_PATH = re.compile(r"^/api/v1/namespaces/([^/]+)/secrets(?:/([^/]+))?$")
WEBHOOK_PATH = re.compile(
    r"^/apis/admissionregistration\.k8s\.io/v1/mutatingwebhookconfigurations/([^/]+)$"
)


def load_bootstrap() -> ModuleType:
    spec = importlib.util.spec_from_file_location("wi_deploy_bootstrap", SCRIPT)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


bootstrap = load_bootstrap()


@dataclass
class FakeApi:
    """Secrets and MutatingWebhookConfigurations, as much as the script uses."""

    secrets: dict[tuple[str, str], Obj] = field(default_factory=dict)
    webhooks: dict[str, Obj] = field(default_factory=dict)
    calls: list[tuple[str, str]] = field(default_factory=list)
    refuse: dict[tuple[str, str], int] = field(default_factory=dict)
    versions: Iterator[int] = field(default_factory=lambda: itertools.count(1))
    lock: threading.Lock = field(default_factory=threading.Lock)

    def writes(self) -> list[tuple[str, str]]:
        return [c for c in self.calls if c[0] != "GET"]

    def handle(self, method: str, path: str, body: Any) -> tuple[int, Any]:
        with self.lock:
            self.calls.append((method, path))
            if (method, path) in self.refuse:
                return self.refuse[(method, path)], {"message": "refused by the test"}
            if match := SECRET_PATH.match(path):
                return self.secret(method, match.group(1), match.group(2), body)
            if match := WEBHOOK_PATH.match(path):
                return self.webhook(method, match.group(1), body)
            return 404, {"message": "no such route"}

    def secret(
        self, method: str, namespace: str, name: str | None, body: Any
    ) -> tuple[int, Any]:
        if method == "POST" and name is None:
            key = (namespace, body["metadata"]["name"])
            if key in self.secrets:
                return 409, {"reason": "AlreadyExists"}
            body["metadata"]["resourceVersion"] = str(next(self.versions))
            self.secrets[key] = body
            return 201, body
        key = (namespace, name or "")
        if key not in self.secrets:
            return 404, {"reason": "NotFound"}
        if method == "GET":
            return 200, self.secrets[key]
        if method == "PUT":
            current = self.secrets[key]["metadata"]["resourceVersion"]
            if body["metadata"].get("resourceVersion") != current:
                return 409, {"reason": "Conflict"}
            body["metadata"]["resourceVersion"] = str(next(self.versions))
            self.secrets[key] = body
            return 200, body
        return 405, {}

    def webhook(self, method: str, name: str, body: Any) -> tuple[int, Any]:
        if name not in self.webhooks:
            return 404, {"reason": "NotFound"}
        if method == "GET":
            return 200, self.webhooks[name]
        if method == "PATCH":
            try:
                self.webhooks[name] = jsonpatch.apply_patch(self.webhooks[name], body)
            except jsonpatch.JsonPatchException as error:
                return 422, {"message": str(error)}
            return 200, self.webhooks[name]
        return 405, {}


def serve(api: FakeApi) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def answer(self) -> None:
            if self.headers.get("Authorization") != f"Bearer {TOKEN}":
                status, body = 401, {"message": "no token"}
            else:
                length = int(self.headers.get("Content-Length") or 0)
                data = json.loads(self.rfile.read(length)) if length else None
                status, body = api.handle(self.command, self.path, data)
            payload = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        do_GET = do_POST = do_PUT = do_PATCH = answer

        def log_message(self, format: str, *args: Any) -> None:
            """Quiet: pytest shows the script's own log on failure."""

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture
def api() -> Iterator[FakeApi]:
    fake = FakeApi()
    config = only(render("base"), "MutatingWebhookConfiguration", WEBHOOK)
    fake.webhooks[WEBHOOK] = copy.deepcopy(config)
    fake.server = serve(fake)  # type: ignore[attr-defined]
    yield fake
    fake.server.shutdown()  # type: ignore[attr-defined]
    fake.server.server_close()  # type: ignore[attr-defined]


@pytest.fixture
def run(api: FakeApi, tmp_path: Path) -> Any:
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    host, port = api.server.server_address[:2]  # type: ignore[attr-defined]

    def _run(*args: str) -> subprocess.CompletedProcess[str]:
        command = [
            sys.executable,
            str(SCRIPT),
            f"--api-server=http://{host}:{port}",
            f"--token-file={token_file}",
            f"--namespace={WEBHOOK_NAMESPACE}",
            *args,
        ]
        return subprocess.run(
            command, capture_output=True, text=True, timeout=60, check=False
        )

    return _run


def secret_data(api: FakeApi, name: str) -> dict[str, bytes]:
    secret = api.secrets[(WEBHOOK_NAMESPACE, name)]
    return {k: base64.b64decode(v) for k, v in secret["data"].items()}


def ca_bundle_of(api: FakeApi) -> list[x509.Certificate]:
    webhook = api.webhooks[WEBHOOK]["webhooks"][0]
    pem = base64.b64decode(webhook["clientConfig"].get("caBundle", ""))
    return x509.load_pem_x509_certificates(pem) if pem else []


# -- signing key ---------------------------------------------------------------


def test_signing_key_is_created_once(api: FakeApi, run: Any) -> None:
    result = run("signing-key", f"--secret={SIGNING_SECRET}")
    assert result.returncode == 0, result.stderr
    key = serialization.load_pem_private_key(
        secret_data(api, SIGNING_SECRET)["key.pem"], password=None
    )
    assert isinstance(key, rsa.RSAPrivateKey)
    assert key.key_size == 2048

    api.calls.clear()
    result = run("signing-key", f"--secret={SIGNING_SECRET}")
    assert result.returncode == 0, result.stderr
    assert api.writes() == []


def test_an_existing_signing_key_is_never_replaced(api: FakeApi, run: Any) -> None:
    mine = {
        "metadata": {"name": SIGNING_SECRET, "resourceVersion": "7"},
        "data": {"key.pem": "bXk="},
    }
    api.secrets[(WEBHOOK_NAMESPACE, SIGNING_SECRET)] = mine
    result = run("signing-key", f"--secret={SIGNING_SECRET}")
    assert result.returncode == 0, result.stderr
    assert api.writes() == []
    assert api.secrets[(WEBHOOK_NAMESPACE, SIGNING_SECRET)]["data"] == {
        "key.pem": "bXk="
    }


def test_a_refusal_exits_non_zero_and_says_what_to_check(
    api: FakeApi, run: Any
) -> None:
    path = f"/api/v1/namespaces/{WEBHOOK_NAMESPACE}/secrets/{SIGNING_SECRET}"
    api.refuse[("GET", path)] = 403
    result = run("signing-key", f"--secret={SIGNING_SECRET}")
    assert result.returncode == 1
    assert "HTTP 403" in result.stderr
    assert "Role" in result.stderr


# -- serving certificate and caBundle -----------------------------------------------


def test_first_run_issues_a_certificate_and_trusts_its_ca(
    api: FakeApi, run: Any
) -> None:
    result = run("tls", f"--secret={TLS_SECRET}", f"--service={SERVICE}")
    assert result.returncode == 0, result.stderr

    secret = api.secrets[(WEBHOOK_NAMESPACE, TLS_SECRET)]
    assert secret["type"] == "kubernetes.io/tls"
    data = secret_data(api, TLS_SECRET)
    ca = x509.load_pem_x509_certificate(data["ca.crt"])
    cert = x509.load_pem_x509_certificate(data["tls.crt"])
    key = serialization.load_pem_private_key(data["tls.key"], password=None)
    cert.verify_directly_issued_by(ca)
    assert key.public_key() == cert.public_key()
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert set(names.value.get_values_for_type(x509.DNSName)) == DNS_NAMES
    assert ca_bundle_of(api) == [ca]

    # The caBundle is patched before the Secret is written, so the API server
    # already trusts the certificate when the webhook starts serving it.
    writes = api.writes()
    assert writes[0][0] == "PATCH"
    assert writes[1] == ("POST", f"/api/v1/namespaces/{WEBHOOK_NAMESPACE}/secrets")


def test_a_second_run_writes_nothing(api: FakeApi, run: Any) -> None:
    assert run("tls").returncode == 0
    api.calls.clear()
    result = run("tls")
    assert result.returncode == 0, result.stderr
    assert api.writes() == []


def test_a_lost_ca_bundle_is_restored_without_a_new_certificate(
    api: FakeApi, run: Any
) -> None:
    assert run("tls").returncode == 0
    before = secret_data(api, TLS_SECRET)
    del api.webhooks[WEBHOOK]["webhooks"][0]["clientConfig"]["caBundle"]
    assert run("tls").returncode == 0
    assert secret_data(api, TLS_SECRET) == before
    assert ca_bundle_of(api) == [x509.load_pem_x509_certificate(before["ca.crt"])]


def test_a_certificate_near_expiry_is_renewed_with_the_same_ca(
    api: FakeApi, run: Any
) -> None:
    """Sidecars trust the CA their pod was created with (WI_ISSUER_CA): a
    renewal that made a new CA would cut every running pod off /token."""
    assert run("tls", "--days=10").returncode == 0  # already inside the renewal window
    old = secret_data(api, TLS_SECRET)
    result = run("tls", "--days=365")
    assert result.returncode == 0, result.stderr
    assert "expires" in result.stderr
    new = secret_data(api, TLS_SECRET)
    assert new["tls.crt"] != old["tls.crt"]
    assert new["ca.crt"] == old["ca.crt"] and new["ca.key"] == old["ca.key"]
    ca = x509.load_pem_x509_certificate(new["ca.crt"])
    cert = x509.load_pem_x509_certificate(new["tls.crt"])
    cert.verify_directly_issued_by(ca)
    assert cert.not_valid_after_utc - dt.datetime.now(dt.UTC) > dt.timedelta(days=300)
    assert ca.not_valid_after_utc - dt.datetime.now(dt.UTC) > dt.timedelta(days=3000)
    assert ca_bundle_of(api) == [ca]


def test_a_stored_ca_without_its_key_is_replaced_and_both_cas_trusted(
    api: FakeApi, run: Any
) -> None:
    """A Secret written before the CA key was kept: one last new CA, while the
    old one stays in the caBundle until replicas have reloaded."""
    assert run("tls", "--days=10").returncode == 0
    stored = api.secrets[(WEBHOOK_NAMESPACE, TLS_SECRET)]
    del stored["data"]["ca.key"]
    old = secret_data(api, TLS_SECRET)
    assert run("tls", "--days=365").returncode == 0
    new = secret_data(api, TLS_SECRET)
    assert new["ca.crt"] != old["ca.crt"] and "ca.key" in new
    assert ca_bundle_of(api) == [
        x509.load_pem_x509_certificate(new["ca.crt"]),
        x509.load_pem_x509_certificate(old["ca.crt"]),
    ]
    assert (
        "PUT",
        f"/api/v1/namespaces/{WEBHOOK_NAMESPACE}/secrets/{TLS_SECRET}",
    ) in api.writes()


def test_a_certificate_for_another_service_is_replaced(api: FakeApi, run: Any) -> None:
    assert run("tls", "--service=old-name").returncode == 0
    result = run("tls", f"--service={SERVICE}")
    assert result.returncode == 0, result.stderr
    assert "does not name" in result.stderr
    cert = x509.load_pem_x509_certificate(secret_data(api, TLS_SECRET)["tls.crt"])
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert set(names.value.get_values_for_type(x509.DNSName)) == DNS_NAMES


def test_a_missing_webhook_configuration_fails_after_waiting(
    api: FakeApi, run: Any
) -> None:
    api.webhooks.clear()
    result = run("tls", "--wait-seconds=0.2")
    assert result.returncode == 1
    assert "kubectl apply -k" in result.stderr
    assert (WEBHOOK_NAMESPACE, TLS_SECRET) not in api.secrets, (
        "no certificate nobody trusts"
    )


def test_without_a_cluster_or_server_it_says_what_to_pass(tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin"}
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--namespace=x", "signing-key"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=env,
        cwd=tmp_path,
    )
    assert result.returncode == 1
    assert "--api-server" in result.stderr


# -- certificate logic -------------------------------------------------------------


def test_why_renew_accepts_a_fresh_certificate_and_names_each_fault() -> None:
    now = dt.datetime.now(dt.UTC)
    names = bootstrap.service_dns_names(SERVICE, WEBHOOK_NAMESPACE, "cluster.local")
    ca, cert, key = bootstrap.issue_certificates(names, days=90, now=now)
    data = {"ca.crt": ca, "tls.crt": cert, "tls.key": key}
    window = dt.timedelta(days=30)
    assert bootstrap.why_renew(data, names, renew_before=window, now=now) is None

    other_ca, _, other_key = bootstrap.issue_certificates(names, days=90, now=now)
    faults = {
        "missing tls.key": {**data, "tls.key": b""},
        "not issued by ca.crt": {**data, "ca.crt": other_ca},
        "tls.key does not match": {**data, "tls.key": other_key},
        "unreadable": {**data, "tls.crt": b"garbage"},
    }
    for expected, broken in faults.items():
        reason = bootstrap.why_renew(broken, names, renew_before=window, now=now)
        assert reason is not None
        assert expected in reason
    later = now + dt.timedelta(days=61)
    assert "expires" in bootstrap.why_renew(data, names, renew_before=window, now=later)


def test_ca_bundle_drops_expired_cas_and_keeps_one_previous() -> None:
    now = dt.datetime.now(dt.UTC)
    names = ["svc"]
    oldest, _, _ = bootstrap.issue_certificates(names, days=400, now=now)
    old, _, _ = bootstrap.issue_certificates(names, days=400, now=now)
    expired, _, _ = bootstrap.issue_certificates(
        names, days=1, now=now - dt.timedelta(days=5)
    )
    new, _, _ = bootstrap.issue_certificates(names, days=400, now=now)
    bundle = bootstrap.ca_bundle(new, expired + old + oldest, now=now)
    assert x509.load_pem_x509_certificates(bundle) == [
        x509.load_pem_x509_certificate(new),
        x509.load_pem_x509_certificate(old),
    ]
    assert bootstrap.ca_bundle(new, new, now=now) == new
    assert bootstrap.ca_bundle(new, b"", now=now) == new
