"""Helpers the install/verify/status tests share: a loop thread serving
aiohttp apps on 127.0.0.1, the local issuer, identity documents. The
fixtures that start and stop servers are in conftest.py."""

from __future__ import annotations

import asyncio
import socket
import ssl
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from aiohttp import web

from oidc_tokens.claims import Subject
from webhook.issuer import Issuer

LOOPBACK = ("127.0.0.1", "localhost", "::1")
ACCOUNT = "123456789012"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class LoopThread:
    """An asyncio loop in a thread that serves aiohttp apps on 127.0.0.1."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._runners: list[web.AppRunner] = []
        self._thread.start()

    def serve(
        self, app: web.Application, *, tls: ssl.SSLContext | None = None, port: int = 0
    ) -> str:
        port = port or free_port()

        async def start() -> None:
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            await web.TCPSite(runner, "127.0.0.1", port, ssl_context=tls).start()
            self._runners.append(runner)

        asyncio.run_coroutine_threadsafe(start(), self.loop).result(10)
        return f"{'https' if tls else 'http'}://127.0.0.1:{port}"

    def stop(self) -> None:
        async def cleanup() -> None:
            for runner in self._runners:
                await runner.cleanup()

        asyncio.run_coroutine_threadsafe(cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


@dataclass(frozen=True, slots=True)
class LocalIssuer:
    issuer: Issuer
    ca_file: str
    jwks_file: Path

    @property
    def url(self) -> str:
        return self.issuer.url

    def token(self, identity: str, *, audience: str, project: str = "payments") -> str:
        subject = Subject(identity, project, f"{project}-ns", "default", pod="pod-1")
        token, _ = self.issuer.issue(subject, audience=audience, lifetime_seconds=600)
        return token


def aws_document(
    name: str,
    *,
    role: str | None = None,
    permissions: dict[str, Any] | None = None,
    audience: str | None = None,
    projects: tuple[str, ...] = ("payments",),
) -> dict[str, Any]:
    aws: dict[str, Any] = {"roleArn": f"arn:aws:iam::{ACCOUNT}:role/{role or name}"}
    if audience:
        aws["audience"] = audience
    spec: dict[str, Any] = {
        "provider": "aws",
        "aws": aws,
        "scope": {"projects": {"names": list(projects)}},
    }
    if permissions is not None:
        spec["permissions"] = permissions
    return {
        "apiVersion": "workloadidentity.dev/v1alpha1",
        "kind": "WorkloadIdentity",
        "metadata": {"name": name},
        "spec": spec,
    }


def s3_policy(*actions: str) -> dict[str, Any]:
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Action": list(actions or ("s3:GetObject",)),
                "Resource": "arn:aws:s3:::reports/*",
            }
        ],
    }


def gcp_document(
    name: str,
    *,
    account: str | None = "",
    permissions: dict[str, Any] | None = None,
    project_number: str = "123456789012",
    pool: str = "cluster-pool",
    provider: str = "cluster-oidc",
) -> dict[str, Any]:
    gcp: dict[str, Any] = {
        "projectNumber": project_number,
        "poolId": pool,
        "providerId": provider,
        "projectId": "proj-one",
    }
    if account is not None:
        gcp["serviceAccountEmail"] = (
            account or f"{name}@proj-one.iam.gserviceaccount.com"
        )
    spec: dict[str, Any] = {
        "provider": "gcp",
        "gcp": gcp,
        "scope": {"projects": {"names": ["payments"]}},
    }
    if permissions is not None:
        spec["permissions"] = permissions
    return {
        "apiVersion": "workloadidentity.dev/v1alpha1",
        "kind": "WorkloadIdentity",
        "metadata": {"name": name},
        "spec": spec,
    }


def write_identities(path: Path, *documents: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump_all(documents))
    return path
