"""Serving certificates: a self-signed pair for local runs, and an SSL context
that reloads the files when they change (cert-manager rotates them in place)."""

from __future__ import annotations

import datetime
import ipaddress
import logging
import os
import ssl
from typing import Final

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

log = logging.getLogger(__name__)


def write_self_signed(cert_path: str, key_path: str, *, hosts: list[str]) -> None:
    """An ECDSA P-256 certificate for `hosts`; P-256 handshakes are cheaper than RSA."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])])
    alt_names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            alt_names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            alt_names.append(x509.DNSName(host))
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=365))
        .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    descriptor = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "wb") as stream:
        stream.write(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
    # Public, but only its owner may replace it, whatever the umask.
    descriptor = os.open(cert_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    with os.fdopen(descriptor, "wb") as stream:
        stream.write(cert.public_bytes(serialization.Encoding.PEM))


def _stamp(path: str) -> tuple[int, int, int]:
    info = os.stat(path)
    return info.st_ino, info.st_mtime_ns, info.st_size


MODERN_TLS12_CIPHERS: Final = "ECDHE+AESGCM:ECDHE+CHACHA20"
"""TLS 1.2 with forward secrecy and AEAD only (Mozilla's "intermediate"); the
CBC suites OpenSSL would also offer are left out. TLS 1.3 suites are all
modern and unaffected."""


def _server_context() -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(MODERN_TLS12_CIPHERS)
    return context


class ReloadingContext:
    """A server SSL context whose certificate follows the files on disk.

    New connections pick up a rotated pair: `refresh()` is cheap (two stat
    calls) and loads a changed pair into a new context, which the listening
    context hands each new connection during its handshake (the server-name
    callback runs for every ClientHello, with or without SNI). Listeners keep
    running, connections already open keep their certificate, and a pair that
    fails to load (half written, mismatched) never replaces a good one.
    """

    def __init__(self, cert_path: str, key_path: str) -> None:
        self.cert_path = cert_path
        self.key_path = key_path
        self.context = _server_context()
        """The context to listen with; it serves the latest good pair."""
        self.context.load_cert_chain(cert_path, key_path)
        self._current = self.context
        self._stamps: tuple[tuple[int, int, int], ...] = ()
        self.context.sni_callback = self._select
        self.refresh()

    def _select(
        self, connection: ssl.SSLObject, _name: str | None, _ctx: ssl.SSLContext
    ) -> None:
        if self._current is not self.context:
            connection.context = self._current

    def refresh(self) -> bool:
        try:
            stamps = (_stamp(self.cert_path), _stamp(self.key_path))
        except OSError as exc:
            if not self._stamps:
                raise
            log.warning(
                "serving certificate not readable (%s); keeping the loaded one", exc
            )
            return False
        if stamps == self._stamps:
            return False
        # A fresh context each time: loading into the one in use would leave it
        # holding the new certificate with the old key when the pair does not
        # match, and every handshake would fail until the next good pair.
        fresh = _server_context()
        try:
            fresh.load_cert_chain(self.cert_path, self.key_path)
        except (ssl.SSLError, OSError) as exc:
            if not self._stamps:
                raise
            # cert-manager writes the two files one after the other; the pair
            # may be mismatched for a moment, so try again on the next check.
            log.warning("serving certificate pair not loadable yet (%s); retrying", exc)
            return False
        if self._stamps:
            self._current = fresh
            log.info("serving certificate reloaded from %s", self.cert_path)
        self._stamps = stamps
        return True
