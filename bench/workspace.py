"""The files every part of the benchmark shares: TLS pair, signing key, request
bodies and the identities and namespaces the webhook serves."""

from __future__ import annotations

import json
import ssl
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import yaml

from bench import fixtures
from webhook.issuer import write_new_key
from webhook.tls import write_self_signed

SERVER_IDENTITIES: Final = 1_000
"""Identities loaded into the webhook under load (spread over 100 projects)."""


@dataclass(frozen=True, slots=True)
class Workspace:
    root: Path
    state_dir: Path
    """What `webhook serve --state-dir` would create, created up front so every
    server of the run (and the stand-ins) shares one certificate and key."""
    bodies: dict[str, Path]
    identities: Path
    namespaces: Path

    @property
    def cert(self) -> Path:
        return self.state_dir / "tls.crt"

    @property
    def tls_key(self) -> Path:
        return self.state_dir / "tls.key"

    @property
    def signing_key(self) -> Path:
        return self.state_dir / "signing-key.pem"

    def client_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.cert))

    def post_json(
        self, url: str, body: bytes, *, headers: dict[str, str] | None = None
    ) -> Any:
        """One request, for the checks made before any load."""
        request = urllib.request.Request(  # noqa: S310 - https on 127.0.0.1 only
            url,
            data=body,
            headers={"Content-Type": "application/json", **(headers or {})},
            method="POST",
        )
        with urllib.request.urlopen(  # noqa: S310 - https on 127.0.0.1 only
            request, context=self.client_context(), timeout=30
        ) as response:
            return json.loads(response.read())


def prepare(root: Path) -> Workspace:
    state_dir = root / "state"
    state_dir.mkdir(mode=0o700)
    write_self_signed(
        str(state_dir / "tls.crt"),
        str(state_dir / "tls.key"),
        hosts=["127.0.0.1", "localhost"],
    )
    write_new_key(str(state_dir / "signing-key.pem"))
    bodies = {}
    for name, body in fixtures.bodies().items():
        path = root / f"{name.replace(' ', '-')}.json"
        path.write_bytes(body)
        bodies[name] = path
    identities = root / "identities.yaml"
    identities.write_text(
        yaml.safe_dump_all(fixtures.identity_documents(SERVER_IDENTITIES))
    )
    namespaces = root / "namespaces.yaml"
    namespaces.write_text(yaml.safe_dump_all(fixtures.namespace_documents()))
    return Workspace(root, state_dir, bodies, identities, namespaces)
