"""`make demo`: the whole product on 127.0.0.1, one step at a time.

1. moto's server (AWS), a strict STS check in front of it, local Google STS
   and IAM Credentials stand-ins, and the webhook over TLS;
2. the example Deployment's pod goes to /mutate as an AdmissionReview and the
   returned patch is applied;
3. the sidecar runs exactly as the patched pod describes it;
4. the application container's command runs with the injected environment:
   boto3 and google-auth find credentials on their own;
5. every token the sidecar writes is verified as the clouds verify it.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import json
import logging
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import jsonpatch
import yaml
from aiohttp import ClientSession, web
from google.auth.transport.requests import AuthorizedSession

from oidc_tokens.paths import AWS_TOKEN_FILE, GCP_TOKEN_FILE, TOKEN_DIR
from webhook.cloud.aws import AwsCloud
from webhook.cloud.gcp import GcpCloud
from webhook.cloud.install import Clouds, CloudSide, Installer, verify
from webhook.cloud.plan import Check
from webhook.cloud.spec import InstallOptions
from webhook.demo.fake_gcp import FakeGcp
from webhook.demo.fake_gcp import create_app as gcp_app
from webhook.demo.fake_gcp_iam import FakeIam, admin_credentials
from webhook.demo.strict_sts import StrictSts
from webhook.demo.strict_sts import create_app as sts_app
from webhook.demo.verifier import TokenRejected, TokenVerifier
from webhook.identities import Identity, Provider, load_identity_file
from webhook.sidecar_spec import KEY_MOUNT_DIR

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "deploy" / "examples"
BUCKET = "demo-reports"
# Nothing the demo starts may reach a cloud or a metadata address: the SDKs'
# fallbacks are pointed at a closed loopback port.
SAFE_ENV = {
    "AWS_EC2_METADATA_DISABLED": "true",
    "AWS_CONFIG_FILE": "/nonexistent/aws-config",
    "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/aws-credentials",
    "GCE_METADATA_HOST": "127.0.0.1:9",
    "GCE_METADATA_IP": "127.0.0.1:9",
    "NO_GCE_CHECK": "True",
}


class DemoFailed(Exception):
    """A step did not do what it must; the message says which and why."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def say(step: str, text: str = "") -> None:
    print(f"[{step}] {text}" if text else f"\n== {step}", flush=True)


@dataclass(slots=True)
class Paths:
    root: Path
    state: Path = field(init=False)
    tokens: Path = field(init=False)
    signing: Path = field(init=False)

    def __post_init__(self) -> None:
        self.state = self.root / "state"
        self.tokens = self.root / "pod" / "tokens"
        self.signing = self.root / "pod" / "signing"
        for path in (self.tokens, self.signing):
            path.mkdir(parents=True)

    @property
    def ca(self) -> str:
        return str(self.state / "tls.crt")


@contextlib.contextmanager
def process(
    argv: list[str], *, env: dict[str, str], log: Path
) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as sink:
        proc = subprocess.Popen(argv, env=env, stdout=sink, stderr=subprocess.STDOUT)
        try:
            yield proc
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


@contextlib.asynccontextmanager
async def local_app(app: web.Application, port: int) -> AsyncIterator[None]:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield
    finally:
        await runner.cleanup()


async def wait_ready(
    url: str,
    ssl_context: ssl.SSLContext | None,
    proc: subprocess.Popen[bytes],
    what: str,
) -> None:
    deadline = time.monotonic() + 30
    async with ClientSession() as session:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise DemoFailed(
                    f"{what} exited with code {proc.returncode} before it was ready"
                )
            with contextlib.suppress(OSError, asyncio.TimeoutError):
                async with session.get(
                    url, ssl=ssl_context if ssl_context else False
                ) as response:
                    if response.status == 200:
                        return
            await asyncio.sleep(0.1)
    raise DemoFailed(f"{what} was not ready at {url} within 30 s")


def example_pod() -> dict[str, Any]:
    """The pod the ReplicaSet controller would create for the example Deployment."""
    documents = list(yaml.safe_load_all((EXAMPLES / "deployment.yaml").read_text()))
    deployment = next(d for d in documents if d and d.get("kind") == "Deployment")
    template = deployment["spec"]["template"]
    metadata = dict(template.get("metadata") or {})
    metadata["generateName"] = f"{deployment['metadata']['name']}-7c9d8f6b5-"
    metadata["namespace"] = deployment["metadata"]["namespace"]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": metadata,
        "spec": template["spec"],
    }


def admission_review(pod: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": str(uuid.uuid4()),
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": pod["metadata"]["namespace"],
            "operation": "CREATE",
            "dryRun": False,
            "object": pod,
        },
    }


def resolve_env(
    container: dict[str, Any], pod: dict[str, Any], pod_name: str
) -> dict[str, str]:
    """A container's environment as the kubelet would set it."""
    fields = {
        "metadata.namespace": pod["metadata"]["namespace"],
        "metadata.name": pod_name,
        "spec.serviceAccountName": pod["spec"].get("serviceAccountName", "default"),
    }
    env: dict[str, str] = {}
    for entry in container.get("env") or []:
        if "value" in entry:
            env[entry["name"]] = str(entry["value"])
        elif "fieldRef" in (entry.get("valueFrom") or {}):
            env[entry["name"]] = fields[entry["valueFrom"]["fieldRef"]["fieldPath"]]
    return env


def map_paths(env: dict[str, str], mapping: dict[str, Path]) -> dict[str, str]:
    mapped = {}
    for name, value in env.items():
        for inside, outside in mapping.items():
            if value == inside or value.startswith(inside + "/"):
                value = str(outside) + value[len(inside) :]
        mapped[name] = value
    return mapped


def install_for_demo(cloud: CloudSide, identity: Identity, issuer: str) -> str:
    """`python -m webhook install` for one identity, then once more (which
    must change nothing), then `verify`; a summary for the narration."""
    options = InstallOptions(issuer_url=issuer)
    clouds = Clouds({identity.provider: lambda: cloud})
    out = io.StringIO()
    (first,) = Installer(options, clouds, None, out).run([identity])
    (second,) = Installer(options, clouds, None, out).run([identity])
    worst = verify([identity], options, clouds, out)
    if not first.ok or not second.ok or second.changed or worst is not Check.OK:
        raise DemoFailed(
            f"install of {identity.name} did not settle:\n{out.getvalue()}"
        )
    made = ", ".join(call.short() for call in first.calls)
    return f"install made {len(first.calls)} calls ({made}); a second install changed nothing; verify: ok"


def set_up_aws(moto_url: str, identity: Identity, issuer: str) -> str:
    session = boto3.session.Session(
        aws_access_key_id="moto-admin",
        aws_secret_access_key="moto-admin",  # noqa: S106 - moto's server accepts any key
        region_name="us-east-1",
    )
    summary = install_for_demo(
        AwsCloud(session, endpoint_url=moto_url), identity, issuer
    )
    session.client("s3", endpoint_url=moto_url).create_bucket(Bucket=BUCKET)
    return summary


def set_up_gcp(fake: FakeGcp, gcp_url: str, identity: Identity, issuer: str) -> str:
    cloud = GcpCloud(
        AuthorizedSession(admin_credentials(fake.iam, gcp_url)),  # type: ignore[no-untyped-call]
        iam_url=gcp_url,
        resource_manager_url=f"{gcp_url}/crm",
        poll_seconds=0.05,
    )
    return install_for_demo(cloud, identity, issuer)


@dataclass(slots=True)
class TokenWatch:
    """Verifies every token the sidecar writes, as the clouds would."""

    verifier: TokenVerifier
    expectations: dict[Path, tuple[str, str]]
    """File -> (audience, identity the sub must name)."""
    seen: dict[Path, list[str]] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)

    def check(self) -> None:
        for path, (audience, identity) in self.expectations.items():
            try:
                token = path.read_text()
            except FileNotFoundError:
                continue
            history = self.seen.setdefault(path, [])
            if history and history[-1] == token:
                continue
            history.append(token)
            try:
                claims = self.verifier.verify(token, audiences=[audience])
            except TokenRejected as exc:
                self.failures.append(f"{path.name}: {exc}")
                continue
            if not str(claims["sub"]).startswith(f"{identity}:"):
                self.failures.append(
                    f"{path.name}: sub {claims['sub']!r} does not name {identity}"
                )
                continue
            say(
                "5 verify",
                f"{path.name} #{len(history)}: signature, kid, iss, aud, exp and sub check out (sub={claims['sub']}, lifetime {claims['exp'] - claims['iat']} s)",
            )

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await asyncio.to_thread(self.check)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.2)

    def refreshed(self) -> bool:
        return bool(self.seen) and all(
            len(self.seen.get(p, [])) >= 2 for p in self.expectations
        )


def run_app(
    container: dict[str, Any], env: dict[str, str], paths: Paths, step: str
) -> None:
    command = [*(container.get("command") or []), *(container.get("args") or [])]
    if not command or command[0] not in ("python", "python3"):
        raise DemoFailed(
            f"the example container's command {command} is not a python command"
        )
    argv = [
        sys.executable,
        *[c.replace("/app/", str(EXAMPLES / "app") + "/") for c in command[1:]],
    ]
    result = subprocess.run(
        argv,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=paths.root,
        check=False,
    )
    for line in result.stdout.splitlines():
        say(step, f"app: {line}")
    if result.returncode != 0:
        raise DemoFailed(
            f"the application failed (exit {result.returncode}):\n{result.stderr[-3000:]}"
        )


async def demo(paths: Paths) -> None:
    identities = {
        i.name: i
        for i in load_identity_file(str(EXAMPLES / "identities.yaml")).identities
    }
    aws_identity = next(i for i in identities.values() if i.provider is Provider.AWS)
    gcp_identity = next(i for i in identities.values() if i.provider is Provider.GCP)
    ports = {
        name: free_port()
        for name in ("webhook", "metrics", "moto", "sts", "gcp", "sidecar")
    }
    issuer = f"https://127.0.0.1:{ports['webhook']}"
    ca_context = ssl.create_default_context(cafile=None)

    say("1 start the cloud side and the webhook")
    from moto.server import ThreadedMotoServer

    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=ports["moto"], verbose=False)
    moto.start()
    moto_url = f"http://127.0.0.1:{ports['moto']}"
    say("1", f"moto (AWS API emulator) on {moto_url}")
    strict = StrictSts(moto_url=moto_url, ca_file=paths.ca)
    fake_gcp = FakeGcp(
        ca_file=paths.ca, iam=FakeIam(projects={"demo-project": "123456789012"})
    )
    gcp_url = f"http://127.0.0.1:{ports['gcp']}"
    base_env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **SAFE_ENV}
    webhook_argv = [
        sys.executable, "-m", "webhook", "serve",
        # Nothing routes to the demo's webhook through a Service: stop at once.
        "--shutdown-delay", "0",
        "--identities", str(EXAMPLES / "identities.yaml"),
        "--namespaces", str(EXAMPLES / "namespaces.yaml"),
        "--state-dir", str(paths.state),
        "--listen", f"127.0.0.1:{ports['webhook']}",
        "--metrics-listen", f"127.0.0.1:{ports['metrics']}",
        "--signing-mode", "key",
        "--gcp-sts-url", f"http://127.0.0.1:{ports['gcp']}/v1/token",
        "--gcp-iam-credentials-url", f"http://127.0.0.1:{ports['gcp']}",
    ]  # fmt: skip
    try:
        async with (
            local_app(sts_app(strict), ports["sts"]),
            local_app(gcp_app(fake_gcp), ports["gcp"]),
        ):
            with process(
                webhook_argv, env=base_env, log=paths.root / "webhook.log"
            ) as webhook:
                await wait_for_file(Path(paths.ca), webhook)
                ca_context = ssl.create_default_context(cafile=paths.ca)
                await wait_ready(f"{issuer}/readyz", ca_context, webhook, "the webhook")
                say(
                    "1",
                    f"webhook serving /mutate and the issuer at {issuer} (TLS, self-signed CA in {paths.state})",
                )
                summary = await asyncio.to_thread(
                    set_up_aws, moto_url, aws_identity, issuer
                )
                say(
                    "1",
                    f"AWS: OIDC provider for {issuer} and role {aws_identity.aws.role_arn if aws_identity.aws else ''} whose trust policy pins aud and sub '{aws_identity.name}:*'; {summary}",
                )
                summary = await asyncio.to_thread(
                    set_up_gcp, fake_gcp, gcp_url, gcp_identity, issuer
                )
                say(
                    "1",
                    f"GCP: pool provider {gcp_identity.audience} trusts the issuer; only {gcp_identity.name} may impersonate its service account; {summary}",
                )
                await pod_lifecycle(
                    paths,
                    issuer,
                    ca_context,
                    ports,
                    strict,
                    fake_gcp,
                    aws_identity,
                    gcp_identity,
                    base_env,
                )
                if webhook.poll() is not None:
                    raise DemoFailed("the webhook stopped during the demo")
    finally:
        moto.stop()


async def wait_for_file(path: Path, proc: subprocess.Popen[bytes]) -> None:
    for _ in range(300):
        if await asyncio.to_thread(path.exists):
            return
        if proc.poll() is not None:
            raise DemoFailed(
                f"the webhook exited with code {proc.returncode}; see webhook.log"
            )
        await asyncio.sleep(0.1)
    raise DemoFailed(f"{path} did not appear")


async def pod_lifecycle(
    paths: Paths,
    issuer: str,
    ca_context: ssl.SSLContext,
    ports: dict[str, int],
    strict: StrictSts,
    fake_gcp: FakeGcp,
    aws_identity: Identity,
    gcp_identity: Identity,
    base_env: dict[str, str],
) -> None:
    say("2 admit the example Deployment's pod")
    pod = example_pod()
    review = admission_review(pod)
    async with (
        ClientSession() as session,
        session.post(f"{issuer}/mutate", json=review, ssl=ca_context) as response,
    ):
        answer = await response.json()
    result = answer["response"]
    if not result.get("allowed") or result.get("uid") != review["request"]["uid"]:
        raise DemoFailed(f"the webhook did not allow the pod: {result}")
    patch = json.loads(base64.b64decode(result.get("patch", "")) or b"[]")
    patched = jsonpatch.apply_patch(pod, patch)
    annotations = patched["metadata"].get("annotations", {})
    say(
        "2",
        f"{len(patch)} JSON Patch operations applied; identities: aws={annotations.get('workloadidentity.dev/aws')}, gcp={annotations.get('workloadidentity.dev/gcp')}",
    )
    for warning in result.get("warnings", []):
        say("2", f"warning: {warning}")
    sidecar = patched["spec"]["initContainers"][0]
    app = next(c for c in patched["spec"]["containers"] if c["name"] == "app")
    injected = sorted(
        e["name"]
        for e in app.get("env", [])
        if e["name"].startswith(("AWS_", "GOOGLE_", "CLOUDSDK_"))
    )
    say(
        "2",
        f"sidecar {sidecar['name']!r} is initContainers[0] (restartPolicy {sidecar.get('restartPolicy')}); app gets {', '.join(injected)}",
    )

    say("3 run the sidecar as the pod describes it")
    pod_name = "reports-7c9d8f6b5-x2x5q"
    shutil.copy(paths.state / "signing-key.pem", paths.signing / "key.pem")
    os.chmod(paths.signing / "key.pem", 0o600)
    mapping = {TOKEN_DIR: paths.tokens, KEY_MOUNT_DIR: paths.signing}
    sidecar_env = map_paths(resolve_env(sidecar, patched, pod_name), mapping)
    sidecar_env["WI_LISTEN"] = f"127.0.0.1:{ports['sidecar']}"
    env = {**base_env, **sidecar_env}
    watch = TokenWatch(
        verifier=TokenVerifier({issuer}, ca_file=paths.ca),
        expectations={
            paths.tokens / AWS_TOKEN_FILE: (aws_identity.audience, aws_identity.name),
            paths.tokens / GCP_TOKEN_FILE: (gcp_identity.audience, gcp_identity.name),
        },
    )
    stop = asyncio.Event()
    watcher = asyncio.create_task(watch.run(stop))
    with process(
        [sys.executable, "-m", "sidecar"], env=env, log=paths.root / "sidecar.log"
    ) as proc:
        await wait_ready(
            f"http://127.0.0.1:{ports['sidecar']}/readyz", None, proc, "the sidecar"
        )
        say(
            "3",
            f"startup probe passes: tokens written to {paths.tokens} (stands for {TOKEN_DIR})",
        )

        say("4 run the application with the injected environment")
        app_env = {
            **map_paths(resolve_env(app, patched, pod_name), mapping),
            **base_env,
            "AWS_ENDPOINT_URL": f"http://127.0.0.1:{ports['sts']}",
            "HOME": str(paths.root),
        }
        say(
            "4",
            f"AWS_ENDPOINT_URL={app_env['AWS_ENDPOINT_URL']} routes AWS calls to moto through the strict STS check; no keys anywhere",
        )
        await asyncio.to_thread(run_app, app, app_env, paths, "4")

        say("5 wait for the sidecar to refresh the tokens, then run the app again")
        deadline = time.monotonic() + 60
        while not watch.refreshed() and time.monotonic() < deadline:
            if proc.poll() is not None:
                raise DemoFailed(
                    f"the sidecar exited with code {proc.returncode}; see sidecar.log"
                )
            await asyncio.sleep(0.2)
        if not watch.refreshed():
            raise DemoFailed("the sidecar did not refresh its tokens within 60 s")
        await asyncio.to_thread(run_app, app, app_env, paths, "5")
        proc.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(proc.wait, 15)
        if code != 0:
            raise DemoFailed(
                f"the sidecar exited with {code} on SIGTERM; a Job's pod needs 0"
            )
    stop.set()
    await watcher
    watch.check()
    if watch.failures:
        raise DemoFailed("a token was refused:\n  " + "\n  ".join(watch.failures))
    if strict.refusals or fake_gcp.refusals:
        raise DemoFailed(
            f"the cloud side refused a token: {strict.refusals + fake_gcp.refusals}"
        )
    if not strict.exchanges or not fake_gcp.exchanges or not fake_gcp.impersonations:
        raise DemoFailed("the application never exchanged a token with both clouds")
    tokens = sum(len(v) for v in watch.seen.values())
    say(
        "done",
        f"{tokens} tokens verified; STS accepted {len(strict.exchanges)} web identity exchanges, Google STS {len(fake_gcp.exchanges)}, with {len(fake_gcp.impersonations)} impersonations; sidecar exited 0 on SIGTERM",
    )


@contextlib.contextmanager
def loopback_only() -> Iterator[None]:
    """In the demo's own process no name but a loopback one resolves, so an
    SDK that falls back to a real cloud endpoint fails at once instead."""
    original = socket.getaddrinfo

    def guarded(host: Any, *args: Any, **kwargs: Any) -> Any:
        name = host.decode() if isinstance(host, bytes) else host
        if name not in (None, "127.0.0.1", "localhost", "::1"):
            raise socket.gaierror(f"the demo reaches 127.0.0.1 only, not {name}")
        return original(host, *args, **kwargs)

    socket.getaddrinfo = guarded
    try:
        yield
    finally:
        socket.getaddrinfo = original


def run_demo(*, keep: bool = False) -> int:
    # moto's embedded server logs every request; the demo tells its own story.
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    root = Path(tempfile.mkdtemp(prefix="workload-identity-demo-"))
    paths = Paths(root)
    try:
        with loopback_only():
            asyncio.run(demo(paths))
    except DemoFailed as exc:
        print(f"\nDEMO FAILED: {exc}\n(logs in {root})", file=sys.stderr)
        return 1
    finally:
        if not keep and root.exists():
            failed = sys.exc_info()[0] is not None
            if not failed:
                shutil.rmtree(root, ignore_errors=True)
    print("\nThe demo passed: every step above ran for real on 127.0.0.1.")
    return 0
