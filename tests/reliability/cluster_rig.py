"""`python -m webhook serve --source kubernetes` as a process against the fake
API server, the issuer's documents hosted apart from it, and the pods and
ServiceAccount tokens the tests present to /token.

The fake API server and the document host run on an event loop in a thread,
so that the test itself can block on processes and SDK calls.
"""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
import ssl
import threading
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, TypeVar

from aiohttp import web

from oidc_tokens.keys import PublicKey, SigningKey, jwks
from tests.reliability.support import (
    HttpsClient,
    Process,
    Processes,
    clean_env,
    free_port,
    wait_for,
)
from tests.webhook.fake_kube import (
    FakeKube,
    ReviewedToken,
    write_kubeconfig,
)
from webhook.issuer import DISCOVERY_PATH, JWKS_PATH

T = TypeVar("T")
PROJECT_LABEL: Final = "workloadidentity.dev/project"
POD_NAME_EXTRA: Final = "authentication.kubernetes.io/pod-name"
POD_UID_EXTRA: Final = "authentication.kubernetes.io/pod-uid"


class LoopThread:
    """An event loop in a thread; what runs on it is called from the test."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        self._runners: list[web.AppRunner] = []

    def run(self, coroutine: Coroutine[Any, Any, T], timeout: float = 30) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def call(self, function: Callable[[], T]) -> T:
        """Run a plain function on the loop (where the fake's queues live)."""

        async def wrapped() -> T:
            return function()

        return self.run(wrapped())

    def serve(self, app: web.Application, *, tls: ssl.SSLContext | None) -> int:
        async def start() -> int:
            runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=tls)
            await site.start()
            self._runners.append(runner)
            return int(runner.addresses[0][1])

        return self.run(start())

    def stop(self) -> None:
        async def cleanup() -> None:
            for runner in self._runners:
                await runner.cleanup()

        self.run(cleanup())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


@dataclass
class DocumentHost:
    """The issuer's discovery document and JWKS on a static HTTPS site, as the
    README describes for an issuer the clouds must reach: publishing or
    retiring a key is replacing the JWKS there."""

    keys: list[PublicKey] = field(default_factory=list)
    url: str = ""

    def app(self) -> web.Application:
        async def discovery(_: web.Request) -> web.Response:
            return web.json_response(
                {
                    "issuer": self.url,
                    "jwks_uri": f"{self.url}{JWKS_PATH}",
                    "response_types_supported": ["id_token"],
                    "subject_types_supported": ["public"],
                    "id_token_signing_alg_values_supported": ["RS256", "ES256"],
                }
            )

        async def keys(_: web.Request) -> web.Response:
            return web.json_response(jwks(list(self.keys)))

        app = web.Application()
        app.router.add_get(DISCOVERY_PATH, discovery)
        app.router.add_get(JWKS_PATH, keys)
        return app

    def publish(self, *keys: SigningKey) -> None:
        self.keys = [key.public_key() for key in keys]


def jwt_shaped(claims: dict[str, Any]) -> str:
    """A token that looks like a projected ServiceAccount token, so that the
    log scan would catch it wherever it leaked."""

    def segment(value: dict[str, Any]) -> str:
        return (
            base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()
        )

    return f"{segment({'alg': 'RS256', 'kid': 'sa'})}.{segment(claims)}.{secrets.token_urlsafe(32)}"


@dataclass
class Cluster:
    """The fake API server, seen from the test thread."""

    fake: FakeKube
    thread: LoopThread
    audience: str
    """What the webhook's TokenReviews ask for: its issuer URL."""

    def namespace(self, name: str, project: str | None = None) -> None:
        labels = {PROJECT_LABEL: project} if project else {}
        self.thread.call(lambda: self.fake.put_namespace(name, labels))

    def identity(self, document: dict[str, Any]) -> None:
        self.thread.call(lambda: self.fake.put_identity(document))

    def pod(
        self,
        namespace: str,
        name: str,
        *,
        tags: str = "",
        service_account: str = "reports",
    ) -> dict[str, Any]:
        annotations = {"workloadidentity.dev/tags": tags} if tags else {}
        return self.thread.call(
            lambda: self.fake.put_pod(
                namespace,
                name,
                annotations=annotations,
                service_account=service_account,
            )
        )

    def delete_pod(self, namespace: str, name: str) -> None:
        delete = getattr(self.fake, "delete_pod", None)
        if delete is not None:
            self.thread.call(lambda: delete(namespace, name))
        else:
            self.thread.call(lambda: self.fake.pods.pop((namespace, name)))

    def retag_pod(self, namespace: str, name: str, tags: str) -> None:
        annotations = {"workloadidentity.dev/tags": tags}
        update = getattr(self.fake, "update_pod", None)
        if update is not None:
            self.thread.call(lambda: update(namespace, name, annotations=annotations))
        else:

            def change() -> None:
                self.fake.pods[(namespace, name)]["metadata"]["annotations"] = (
                    annotations
                )

            self.thread.call(change)

    def sa_token(
        self,
        pod: dict[str, Any] | None,
        *,
        namespace: str,
        service_account: str = "reports",
        audiences: Sequence[str] | None = None,
    ) -> str:
        """A token the fake's TokenReview accepts, bound to `pod` if given."""
        username = f"system:serviceaccount:{namespace}:{service_account}"
        token = jwt_shaped({"sub": username, "aud": list(audiences or [self.audience])})
        extra: dict[str, list[str]] = {}
        if pod is not None:
            extra = {
                POD_NAME_EXTRA: [pod["metadata"]["name"]],
                POD_UID_EXTRA: [pod["metadata"]["uid"]],
            }
        reviewed = ReviewedToken(
            username=username,
            audiences=list(audiences or [self.audience]),
            extra=extra,
        )
        self.thread.call(lambda: self.fake.tokens.__setitem__(token, reviewed))
        return token

    def expire(self, token: str) -> None:
        """From now on the API server no longer accepts `token`."""
        self.thread.call(lambda: self.fake.tokens.pop(token))


def start_cluster(thread: LoopThread, audience: str) -> Cluster:
    fake = FakeKube()
    thread.run(fake.start())
    return Cluster(fake, thread, audience)


@dataclass
class ClusterWebhook:
    process: Process
    port: int
    metrics_port: int
    cafile: Path

    @property
    def token_url(self) -> str:
        return f"https://127.0.0.1:{self.port}/token"

    def client(self) -> HttpsClient:
        return HttpsClient(self.port, self.cafile, timeout=15)

    def stop(self) -> None:
        assert self.process.terminate(timeout=30) == 0, self.process.log()[-3000:]


def start_cluster_webhook(
    processes: Processes,
    directory: Path,
    cluster: Cluster,
    *,
    issuer_url: str,
    keys: Sequence[Path],
    tls: tuple[Path, Path],
    port: int | None = None,
) -> ClusterWebhook:
    """Serve from the fake API server; return once synced and ready."""
    kubeconfig = write_kubeconfig(directory / "kubeconfig", cluster.fake.url)
    port = port or free_port()
    metrics_port = free_port()
    argv = [
        "-m", "webhook", "serve", "--source", "kubernetes", "--shutdown-delay", "0",
        "--kubeconfig", str(kubeconfig),
        "--issuer-url", issuer_url,
        "--tls-cert", str(tls[0]), "--tls-key", str(tls[1]),
        "--listen", f"127.0.0.1:{port}",
        "--metrics-listen", f"127.0.0.1:{metrics_port}",
    ]  # fmt: skip
    for key in keys:
        argv += ["--signing-key", str(key)]
    env = clean_env(HOME=str(directory))  # no kubeconfig of this machine's
    process = processes.python("cluster-webhook", *argv, env=env)
    webhook = ClusterWebhook(process, port, metrics_port, tls[0])

    def ready() -> bool:
        assert process.alive(), f"the webhook exited:\n{process.log()[-3000:]}"
        client = webhook.client()
        try:
            return client.request("GET", "/readyz").status == 200
        except (OSError, ssl.SSLError):
            return False
        finally:
            client.close()

    wait_for(ready, timeout=30, what="the webhook to sync and be ready")
    return webhook


def ask_token(
    webhook: ClusterWebhook,
    token: str | None,
    *,
    identity: str,
    provider: str = "aws",
    body: bytes | None = None,
) -> tuple[int, dict[str, Any]]:
    """POST /token as a sidecar does; (status, JSON answer)."""
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    payload = (
        body
        if body is not None
        else json.dumps({"provider": provider, "identity": identity}).encode()
    )
    client = webhook.client()
    try:
        answer = client.post_json("/token", payload, **headers)
    finally:
        client.close()
    return answer.status, answer.json()
