"""Create the Secrets the webhook mounts, for clusters without cert-manager.

Runs in a Job with the webhook image (it needs the standard library and
`cryptography`, nothing else) and talks to the API server as the Job's
ServiceAccount:

``signing-key``
    Create the issuer's signing key Secret when it is missing. An existing key
    is never replaced: replacing it would break every token signed with it
    (rotate by adding a key, see deploy/README.md).
``tls``
    Keep a self-signed CA and a serving certificate for the webhook Service in
    a ``kubernetes.io/tls`` Secret (``tls.crt``, ``tls.key``, ``ca.crt``, and
    ``ca.key`` which the webhook does not mount), renew the certificate when
    it nears expiry with the same CA (sidecars trust the CA their pod was
    created with; a new CA is made only when the old one would expire before
    the new certificate), and add the CA to the caBundle of the
    MutatingWebhookConfiguration *before* the new certificate is stored, so
    the API server trusts it the moment the webhook serves it.

Every run is idempotent: when nothing needs to change it writes nothing.
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import json
import logging
import os
import ssl
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

log = logging.getLogger("bootstrap")

SA_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
WEBHOOKS_API = "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations"
PART_OF = {"app.kubernetes.io/part-of": "workload-identity"}
CLOCK_SKEW = dt.timedelta(hours=1)


class BootstrapError(Exception):
    """A step failed; the message says what to check."""


class ApiError(BootstrapError):
    """The API server answered with an unexpected status."""

    def __init__(self, method: str, path: str, status: int, body: str) -> None:
        self.status = status
        hint = ""
        if status == 403:
            hint = (
                " (check the Role and ClusterRole bound to this Job's ServiceAccount)"
            )
        super().__init__(f"{method} {path}: HTTP {status}{hint}: {body[:300]}")


@dataclass
class Api:
    """The few API server calls this script makes, over plain urllib."""

    server: str
    token: str
    context: ssl.SSLContext | None

    def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        content_type: str = "application/json",
    ) -> tuple[int, Any]:
        data = None if body is None else json.dumps(body).encode()
        # api_from_args admits only http(s) servers, so no file: URL gets here.
        url = self.server + path
        request = urllib.request.Request(url, data=data, method=method)  # noqa: S310
        request.add_header("Accept", "application/json")
        if data is not None:
            request.add_header("Content-Type", content_type)
        if self.token:
            request.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(  # noqa: S310
                request, timeout=10, context=self.context
            ) as response:
                return response.status, json.loads(response.read() or b"null")
        except urllib.error.HTTPError as error:
            return error.code, error.read().decode(errors="replace")

    def get(self, path: str) -> Any | None:
        """The object at path, or None when it does not exist."""
        status, body = self.call("GET", path)
        if status == 404:
            return None
        if status != 200:
            raise ApiError("GET", path, status, str(body))
        return body

    def write(self, method: str, path: str, body: Any, **kwargs: str) -> Any:
        status, answer = self.call(method, path, body, **kwargs)
        if status not in (200, 201):
            raise ApiError(method, path, status, str(answer))
        return answer


# -- keys and certificates -------------------------------------------------


def pem_private_key(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def pem_cert(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def service_dns_names(service: str, namespace: str, cluster_domain: str) -> list[str]:
    return [
        service,
        f"{service}.{namespace}",
        f"{service}.{namespace}.svc",
        f"{service}.{namespace}.svc.{cluster_domain}",
    ]


CA_DAYS = 3650
"""The CA outlives many serving certificates: injected sidecars trust the CA
their pod was created with, so a renewal must not replace it."""


def new_ca(
    *, days: int, now: dt.datetime
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name(
        [x509.NameAttribute(NameOID.COMMON_NAME, "workload-identity-ca")]
    )
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    return ca_cert, ca_key


def issue_certificates(
    dns_names: list[str],
    *,
    days: int,
    now: dt.datetime,
    ca: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None = None,
    ca_days: int | None = None,
) -> tuple[bytes, bytes, bytes]:
    """A serving certificate signed by `ca`, or by a new CA valid `ca_days`
    (default: as long as the certificate): (ca.crt, tls.crt, tls.key)."""
    not_before, not_after = now - CLOCK_SKEW, now + dt.timedelta(days=days)
    ca_cert, ca_key = ca or new_ca(days=ca_days or days, now=now)
    ca_name = ca_cert.subject

    # Clients check the SANs; the common name is for people (at most 64 chars).
    common_name = next((n for n in dns_names if n.endswith(".svc")), dns_names[0])
    if len(common_name) > 64:
        common_name = min(dns_names, key=len)[:64]
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName(name) for name in dns_names]),
            critical=False,
        )
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    return pem_cert(ca_cert), pem_cert(cert), pem_private_key(key)


def reusable_ca(
    data: dict[str, bytes], *, days: int, now: dt.datetime
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None:
    """The stored CA and its key, if they can sign a certificate valid `days`
    (the CA must outlive it); None means a new CA is needed."""
    if not data.get("ca.crt") or not data.get("ca.key"):
        return None
    try:
        cert = x509.load_pem_x509_certificate(data["ca.crt"])
        key = serialization.load_pem_private_key(data["ca.key"], password=None)
    except ValueError as error:
        log.warning("the stored CA is unreadable (%s); making a new one", error)
        return None
    if (
        not isinstance(key, ec.EllipticCurvePrivateKey)
        or key.public_key() != cert.public_key()
    ):
        log.warning("ca.key does not match ca.crt; making a new CA")
        return None
    if cert.not_valid_after_utc < now + dt.timedelta(days=days):
        log.info(
            "the CA expires %s, before a new certificate would",
            f"{cert.not_valid_after_utc:%Y-%m-%d}",
        )
        return None
    return cert, key


def why_renew(
    data: dict[str, bytes],
    dns_names: list[str],
    *,
    renew_before: dt.timedelta,
    now: dt.datetime,
) -> str | None:
    """Why the stored certificate cannot be kept, or None when it can."""
    missing = [k for k in ("ca.crt", "tls.crt", "tls.key") if not data.get(k)]
    if missing:
        return f"missing {', '.join(missing)}"
    try:
        ca = x509.load_pem_x509_certificate(data["ca.crt"])
        cert = x509.load_pem_x509_certificate(data["tls.crt"])
        key = serialization.load_pem_private_key(data["tls.key"], password=None)
    except ValueError as error:
        return f"unreadable: {error}"
    if cert.not_valid_after_utc - now < renew_before:
        return f"expires {cert.not_valid_after_utc:%Y-%m-%d}"
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        covered = set(sans.value.get_values_for_type(x509.DNSName))
    except x509.ExtensionNotFound:
        covered = set()
    if not set(dns_names) <= covered:
        return "does not name " + ", ".join(sorted(set(dns_names) - covered))
    try:
        cert.verify_directly_issued_by(ca)
    except (InvalidSignature, ValueError, TypeError):
        return "not issued by ca.crt"
    if key.public_key() != cert.public_key():
        return "tls.key does not match tls.crt"
    return None


def ca_bundle(
    new_ca: bytes, current: bytes, *, now: dt.datetime, keep_old: int = 1
) -> bytes:
    """new_ca first, then up to keep_old other still valid CAs from current.

    Keeping the previous CA means a webhook replica that still serves the
    old certificate stays trusted until it has reloaded the new one.
    """
    fresh = x509.load_pem_x509_certificate(new_ca)
    old = []
    if current.strip():
        try:
            old = x509.load_pem_x509_certificates(current)
        except ValueError:
            log.warning("the current caBundle is unreadable; replacing it")
    kept = [c for c in old if c != fresh and c.not_valid_after_utc > now][:keep_old]
    return pem_cert(fresh) + b"".join(pem_cert(c) for c in kept)


# -- steps -----------------------------------------------------------------


def b64(value: bytes) -> str:
    return base64.b64encode(value).decode()


def secret_body(name: str, namespace: str, kind: str, data: dict[str, bytes]) -> Any:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": namespace, "labels": dict(PART_OF)},
        "type": kind,
        "data": {k: b64(v) for k, v in data.items()},
    }


def ensure_signing_key(api: Api, *, namespace: str, secret: str, key_bits: int) -> bool:
    """Create the signing key Secret unless it exists. True when created."""
    path = f"/api/v1/namespaces/{namespace}/secrets"
    if api.get(f"{path}/{secret}") is not None:
        log.info(
            "signing key Secret %s/%s exists; leaving it as it is", namespace, secret
        )
        return False
    key = rsa.generate_private_key(public_exponent=65537, key_size=key_bits)
    body = secret_body(secret, namespace, "Opaque", {"key.pem": pem_private_key(key)})
    status, answer = api.call("POST", path, body)
    if status == 409:  # another run won the race; its key is as good as ours
        log.info("signing key Secret %s/%s was created meanwhile", namespace, secret)
        return False
    if status != 201:
        raise ApiError("POST", path, status, str(answer))
    log.info("created signing key Secret %s/%s (RSA %d)", namespace, secret, key_bits)
    return True


def wait_for_webhook_config(api: Api, name: str, *, wait_seconds: float) -> Any:
    """The MutatingWebhookConfiguration, waiting for kubectl to create it."""
    deadline = time.monotonic() + wait_seconds
    while True:
        config = api.get(f"{WEBHOOKS_API}/{name}")
        if config is not None:
            return config
        if time.monotonic() >= deadline:
            raise BootstrapError(
                f"MutatingWebhookConfiguration {name} not found after {wait_seconds:.0f}s:"
                " apply the whole overlay (kubectl apply -k), then rerun this Job"
            )
        log.info("waiting for MutatingWebhookConfiguration %s", name)
        time.sleep(min(2.0, wait_seconds))


def patch_ca_bundle(
    api: Api, name: str, ca: bytes, *, now: dt.datetime, wait_seconds: float
) -> bool:
    """Put ca into every webhook's caBundle. True when something changed."""
    config = wait_for_webhook_config(api, name, wait_seconds=wait_seconds)
    ops: list[dict[str, Any]] = []
    for index, webhook in enumerate(config.get("webhooks") or []):
        current = base64.b64decode(webhook.get("clientConfig", {}).get("caBundle", ""))
        bundle = ca_bundle(ca, current, now=now)
        if bundle != current:
            # The test guards against the list changing between GET and PATCH.
            ops.append(
                {
                    "op": "test",
                    "path": f"/webhooks/{index}/name",
                    "value": webhook["name"],
                }
            )
            ops.append(
                {
                    "op": "add",
                    "path": f"/webhooks/{index}/clientConfig/caBundle",
                    "value": b64(bundle),
                }
            )
    if not ops:
        log.info("caBundle of %s is up to date", name)
        return False
    api.write(
        "PATCH",
        f"{WEBHOOKS_API}/{name}",
        ops,
        content_type="application/json-patch+json",
    )
    log.info("updated caBundle of %s", name)
    return True


def ensure_tls(
    api: Api,
    *,
    namespace: str,
    secret: str,
    service: str,
    webhook_config: str,
    cluster_domain: str,
    days: int,
    renew_before_days: int,
    wait_seconds: float,
) -> bool:
    """Keep the serving certificate valid and trusted. True when renewed."""
    now = dt.datetime.now(dt.UTC)
    dns_names = service_dns_names(service, namespace, cluster_domain)
    path = f"/api/v1/namespaces/{namespace}/secrets"
    existing = api.get(f"{path}/{secret}")
    data = {
        k: base64.b64decode(v) for k, v in ((existing or {}).get("data") or {}).items()
    }
    reason = why_renew(
        data, dns_names, renew_before=dt.timedelta(days=renew_before_days), now=now
    )
    if reason is None:
        # The certificate is fine; still make sure the webhook trusts its CA
        # (the configuration may have been re-created without a caBundle).
        patch_ca_bundle(
            api, webhook_config, data["ca.crt"], now=now, wait_seconds=wait_seconds
        )
        log.info("certificate in %s/%s is valid; nothing to renew", namespace, secret)
        return False

    log.info("issuing a new certificate for %s: %s", service, reason)
    stored_ca = reusable_ca(data, days=days, now=now)
    if stored_ca is None:
        stored_ca = new_ca(days=max(CA_DAYS, days), now=now)
        log.info("made a new CA, valid %d days", max(CA_DAYS, days))
    ca, cert, key = issue_certificates(dns_names, days=days, now=now, ca=stored_ca)
    patch_ca_bundle(api, webhook_config, ca, now=now, wait_seconds=wait_seconds)
    # ca.key stays in this Secret for the next renewal; the webhook's volume
    # lists the other three keys only.
    body = secret_body(
        secret,
        namespace,
        "kubernetes.io/tls",
        {
            "ca.crt": ca,
            "ca.key": pem_private_key(stored_ca[1]),
            "tls.crt": cert,
            "tls.key": key,
        },
    )
    if existing is None:
        api.write("POST", path, body)
    else:
        body["metadata"]["resourceVersion"] = existing["metadata"]["resourceVersion"]
        api.write("PUT", f"{path}/{secret}", body)
    log.info("stored the new certificate in %s/%s", namespace, secret)
    return True


# -- command line ------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--namespace",
        default=os.environ.get("POD_NAMESPACE"),
        help="namespace of the Secrets (default: $POD_NAMESPACE, then this pod's)",
    )
    parser.add_argument("--api-server", help="API server URL (default: in-cluster)")
    parser.add_argument("--token-file", type=Path, default=SA_DIR / "token")
    parser.add_argument("--ca-file", type=Path, default=SA_DIR / "ca.crt")
    steps = parser.add_subparsers(dest="step", required=True)

    key = steps.add_parser(
        "signing-key", help="create the signing key Secret if missing"
    )
    key.add_argument("--secret", default="workload-identity-signing-key")
    key.add_argument("--key-bits", type=int, default=2048)

    tls = steps.add_parser(
        "tls", help="keep the serving certificate and caBundle valid"
    )
    tls.add_argument("--secret", default="workload-identity-tls")
    tls.add_argument("--service", default="workload-identity")
    tls.add_argument("--webhook-config", default="workload-identity")
    tls.add_argument("--cluster-domain", default="cluster.local")
    tls.add_argument(
        "--days", type=int, default=365, help="validity of new certificates"
    )
    tls.add_argument("--renew-before-days", type=int, default=30)
    tls.add_argument(
        "--wait-seconds",
        type=float,
        default=120,
        help="how long to wait for the MutatingWebhookConfiguration to appear",
    )
    return parser.parse_args(argv)


def api_from_args(args: argparse.Namespace) -> Api:
    server = args.api_server
    if not server:
        host = os.environ.get("KUBERNETES_SERVICE_HOST")
        port = os.environ.get("KUBERNETES_SERVICE_PORT", "443")
        if not host:
            raise BootstrapError("not running in a cluster: pass --api-server URL")
        server = f"https://[{host}]:{port}" if ":" in host else f"https://{host}:{port}"
    if not server.startswith(("https://", "http://")):
        raise BootstrapError(f"--api-server must be an http(s) URL, not {server!r}")
    token = args.token_file.read_text().strip() if args.token_file.exists() else ""
    context = None
    if server.startswith("https://"):
        cafile = str(args.ca_file) if args.ca_file.exists() else None
        context = ssl.create_default_context(cafile=cafile)
    return Api(server.rstrip("/"), token, context)


def namespace_from_args(args: argparse.Namespace) -> str:
    if args.namespace:
        return str(args.namespace)
    own = SA_DIR / "namespace"
    if own.exists():
        return own.read_text().strip()
    raise BootstrapError("no namespace: pass --namespace or set POD_NAMESPACE")


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    args = parse_args(argv)
    try:
        api = api_from_args(args)
        namespace = namespace_from_args(args)
        if args.step == "signing-key":
            ensure_signing_key(
                api, namespace=namespace, secret=args.secret, key_bits=args.key_bits
            )
        else:
            ensure_tls(
                api,
                namespace=namespace,
                secret=args.secret,
                service=args.service,
                webhook_config=args.webhook_config,
                cluster_domain=args.cluster_domain,
                days=args.days,
                renew_before_days=args.renew_before_days,
                wait_seconds=args.wait_seconds,
            )
    except (BootstrapError, OSError) as error:
        log.error("%s", error)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
