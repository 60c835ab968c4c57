"""The Kubernetes API client: where its configuration comes from, the API groups
the webhook calls, and calls that answer plain JSON.

Calls go through `call_json`, which reads the raw body instead of the generated
models: `parse_identity` and `describe_namespace` read dicts, and the webhook
validates WorkloadIdentities itself.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final, cast

import aiohttp
from kubernetes_asyncio import client, config
from kubernetes_asyncio.client.exceptions import ApiException

GROUP: Final = "workloadidentity.dev"
VERSION: Final = "v1alpha1"
PLURAL: Final = "workloadidentities"

DEFAULT_TIMEOUT_SECONDS: Final = 5.0
"""For one ordinary call. Admission must answer within the webhook's
timeoutSeconds and a sidecar gives /token 10 s, so a call cannot take longer."""


class KubeConfigError(ValueError):
    """The API server cannot be reached with the given settings."""


async def load_configuration(
    kubeconfig: str | None = None, *, in_cluster: bool = True
) -> client.Configuration:
    """The client configuration, from `kubeconfig` when given, else from the
    pod's ServiceAccount (`in_cluster`), else from the user's default kubeconfig.

    The in-cluster configuration re-reads the ServiceAccount token file, which
    the kubelet rotates.
    """
    configuration = client.Configuration()
    if not kubeconfig and not in_cluster and not _default_kubeconfigs():
        raise KubeConfigError(
            "no kubeconfig: $KUBECONFIG names no file and ~/.kube/config does not "
            "exist; pass --kubeconfig FILE (WI_KUBECONFIG), or run in a pod"
        )
    if kubeconfig and not os.path.isfile(kubeconfig):  # noqa: ASYNC240 - once, at start
        # kubernetes-asyncio would only say the file lacks a current-context.
        raise KubeConfigError(
            f"kubeconfig {kubeconfig} does not exist or is not a file: pass an "
            "existing one with --kubeconfig (WI_KUBECONFIG)"
        )
    try:
        if kubeconfig:
            await config.load_kube_config(
                config_file=kubeconfig,
                client_configuration=configuration,
                persist_config=False,
            )
        elif in_cluster:
            # kubernetes-asyncio leaves this one function without annotations.
            config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
        else:
            await config.load_kube_config(
                client_configuration=configuration, persist_config=False
            )
    except config.ConfigException as exc:
        raise KubeConfigError(
            f"cannot configure the Kubernetes client ({exc}): run in a pod, or "
            "pass --kubeconfig FILE (WI_KUBECONFIG)"
        ) from exc
    except (TypeError, ValueError, AttributeError, KeyError) as exc:
        # A file that is YAML but no kubeconfig (empty, a list, wrong types)
        # fails inside kubernetes-asyncio with these instead.
        raise KubeConfigError(
            f"kubeconfig {kubeconfig or '(default)'} is not a usable kubeconfig "
            f"({type(exc).__name__}: {exc}): check it with `kubectl config view`"
        ) from exc
    return configuration


def _default_kubeconfigs() -> list[str]:
    """The files kubectl would read without --kubeconfig."""
    listed = os.environ.get("KUBECONFIG", "")
    candidates = [p for p in listed.split(os.pathsep) if p] or [
        os.path.expanduser("~/.kube/config")
    ]
    return [path for path in candidates if os.path.isfile(path)]


@dataclass(frozen=True, slots=True)
class Kube:
    """The API groups the webhook calls, sharing one connection pool."""

    core: client.CoreV1Api
    custom: client.CustomObjectsApi
    authentication: client.AuthenticationV1Api
    apps: client.AppsV1Api
    coordination: client.CoordinationV1Api
    api_client: client.ApiClient
    """The connection pool behind them, for libraries that build their own."""
    timeout: float = DEFAULT_TIMEOUT_SECONDS


@contextlib.asynccontextmanager
async def connect(
    configuration: client.Configuration,
    *,
    request_timeout: float = DEFAULT_TIMEOUT_SECONDS,
) -> AsyncIterator[Kube]:
    """A client for the duration of the block; its connections close after it."""
    async with client.ApiClient(configuration) as api:
        yield Kube(
            core=client.CoreV1Api(api),
            custom=client.CustomObjectsApi(api),
            authentication=client.AuthenticationV1Api(api),
            apps=client.AppsV1Api(api),
            coordination=client.CoordinationV1Api(api),
            api_client=api,
            timeout=request_timeout,
        )


def api_error(status: int, body: bytes) -> ApiException:
    """An ApiException carrying the message of the API server's Status body."""
    reason = body.decode("utf-8", "replace")[:500]
    try:
        decoded = json.loads(body)
    except ValueError:
        decoded = None
    if isinstance(decoded, dict) and decoded.get("message"):
        reason = f"{decoded.get('reason') or 'Failure'}: {decoded['message']}"
    return ApiException(status=status, reason=reason)


async def call_json(
    call: Callable[..., Awaitable[Any]],
    *args: Any,
    request_timeout: float | aiohttp.ClientTimeout,
    **kwargs: Any,
) -> Any:
    """Make one API call and return its decoded JSON body.

    Raises ApiException for an answer outside 2xx, aiohttp.ClientError or
    TimeoutError when the API server cannot be reached.
    """
    response = cast(
        aiohttp.ClientResponse,
        await call(
            *args, _preload_content=False, _request_timeout=request_timeout, **kwargs
        ),
    )
    async with response:
        body = await response.read()
        if not 200 <= response.status < 300:
            raise api_error(response.status, body)
    return json.loads(body)


def unavailable(exc: BaseException) -> bool:
    """Whether `exc` means the API server could not answer now (retry later),
    rather than an answer about the request."""
    if isinstance(exc, ApiException):
        return exc.status == 429 or exc.status >= 500
    return isinstance(exc, aiohttp.ClientError | TimeoutError | OSError)


def describe_error(exc: BaseException) -> str:
    """A one-line description for logs and error bodies."""
    if isinstance(exc, ApiException):
        return f"the API server answered {exc.status} ({exc.reason})"
    if isinstance(exc, TimeoutError):
        return "the API server did not answer in time"
    if isinstance(exc, aiohttp.ClientPayloadError | aiohttp.ServerDisconnectedError):
        return f"the connection to the API server broke ({exc or type(exc).__name__})"
    if isinstance(exc, aiohttp.ClientError | OSError):
        return f"cannot reach the API server ({exc or type(exc).__name__})"
    return f"{type(exc).__name__}: {exc}"
