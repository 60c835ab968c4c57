"""The issuer's /token: a pod's ServiceAccount token in, a cloud token out.

The steps, each with the answer when it fails:

1. `Authorization: Bearer <token>` is present (401) and the body is
   `{"provider": "aws" | "gcp", "identity": NAME}` (400);
2. identities and namespaces are synced (503: the rules are not known yet);
3. a TokenReview with audiences [the issuer URL] accepts the token (401 when
   invalid, expired or for another audience; 503 when the API server cannot
   be reached);
4. the token is bound to a pod, and that pod exists now with the same uid and
   service account (401: a deleted or recreated pod is refused);
5. the scope rules, evaluated now for the project of the pod's namespace and
   the pod's live tags, select exactly the requested identity for that
   provider (403);
6. the issuer signs for that identity's audience and lifetime.

No token is ever logged, neither the one presented nor the one issued.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Final, Protocol

from kubernetes_asyncio.client.exceptions import ApiException

from oidc_tokens.claims import Subject
from webhook.identities import Identity, Provider
from webhook.kube import Kube, call_json, describe_error
from webhook.mutation import INJECT_ANNOTATION
from webhook.namespaces import NamespaceInfo
from webhook.scope import IdentityIndex, pod_tags
from webhook.server import Services, namespace_for

log = logging.getLogger(__name__)

POD_NAME_EXTRA: Final = "authentication.kubernetes.io/pod-name"
POD_UID_EXTRA: Final = "authentication.kubernetes.io/pod-uid"
"""What the API server adds to a token review of a pod-bound token."""

SERVICE_ACCOUNT_PREFIX: Final = "system:serviceaccount:"

TOKEN_PATH: Final = "/token"


class TokenRefused(Exception):
    """A /token request that gets an error status; the message goes back to
    the sidecar, so it says what to fix and never holds a token."""

    status: ClassVar[int] = 500
    outcome: ClassVar[str] = "error"


class BadTokenRequest(TokenRefused):
    status = 400
    outcome = "bad_request"


class Unauthenticated(TokenRefused):
    status = 401
    outcome = "unauthenticated"


class NotEntitled(TokenRefused):
    status = 403
    outcome = "forbidden"


class IssuerUnavailable(TokenRefused):
    status = 503
    outcome = "unavailable"


@dataclass(frozen=True, slots=True)
class TokenRequest:
    provider: Provider
    identity: str


def parse_token_request(body: bytes) -> TokenRequest:
    try:
        decoded = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise BadTokenRequest("the body is not JSON") from None
    except RecursionError:
        raise BadTokenRequest("the body is nested too deeply") from None
    if not isinstance(decoded, dict):
        raise BadTokenRequest("the body is not a JSON object")
    provider, identity = decoded.get("provider"), decoded.get("identity")
    if provider not in {p.value for p in Provider}:
        raise BadTokenRequest(f'provider is {provider!r}: send "aws" or "gcp"')
    if not isinstance(identity, str) or not identity:
        raise BadTokenRequest("identity is missing: send the WorkloadIdentity's name")
    return TokenRequest(Provider(provider), identity)


def bearer_token(authorization: str | None) -> str:
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthenticated(
            "no ServiceAccount token: send the pod's projected token as "
            "Authorization: Bearer <token>"
        )
    return token.strip()


@dataclass(frozen=True, slots=True)
class BoundPod:
    """The live pod a ServiceAccount token is bound to."""

    namespace: str
    name: str
    uid: str
    service_account: str
    annotations: Mapping[str, Any]

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}"


class PodAuthenticator(Protocol):
    """Finds the live pod a ServiceAccount token is bound to, or raises
    Unauthenticated or IssuerUnavailable."""

    async def __call__(self, token: str) -> BoundPod: ...


def _single(values: Any) -> str:
    """One value of a TokenReview `extra` entry (a list of strings)."""
    if isinstance(values, list) and len(values) == 1 and isinstance(values[0], str):
        return values[0]
    return ""


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


class TokenReviewer:
    """PodAuthenticator by TokenReview, then a read of the bound pod."""

    def __init__(self, kube: Kube, *, audience: str) -> None:
        self._kube = kube
        self._audience = audience

    async def __call__(self, token: str) -> BoundPod:
        review = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenReview",
            "spec": {"token": token, "audiences": [self._audience]},
        }
        answer = await self._call(self._kube.authentication.create_token_review, review)
        status = _mapping(_mapping(answer).get("status"))
        if status.get("authenticated") is not True:
            reason = status.get("error") or "invalid or expired"
            raise Unauthenticated(
                f"the ServiceAccount token was not accepted ({reason}); present the "
                f"pod's projected token for audience {self._audience}"
            )
        audiences = status.get("audiences")
        if not isinstance(audiences, list) or self._audience not in audiences:
            raise Unauthenticated(
                f"the ServiceAccount token is not for audience {self._audience}: "
                "project it with that audience"
            )
        user = _mapping(status.get("user"))
        username = str(user.get("username") or "")
        namespace, _, account = username.removeprefix(SERVICE_ACCOUNT_PREFIX).partition(
            ":"
        )
        if not username.startswith(SERVICE_ACCOUNT_PREFIX) or not namespace:
            raise Unauthenticated("the token is not a ServiceAccount token")
        extra = _mapping(user.get("extra"))
        pod_name, pod_uid = (
            _single(extra.get(POD_NAME_EXTRA)),
            _single(extra.get(POD_UID_EXTRA)),
        )
        if not pod_name or not pod_uid:
            raise Unauthenticated(
                "the ServiceAccount token is not bound to a pod: present the "
                "projected token mounted into the pod, not a Secret's or a "
                "TokenRequest's"
            )
        return await self._live_pod(namespace, pod_name, pod_uid, account)

    async def _live_pod(
        self, namespace: str, name: str, uid: str, account: str
    ) -> BoundPod:
        pod = await self._call(
            self._kube.core.read_namespaced_pod, name, namespace, missing_ok=True
        )
        metadata = _mapping(_mapping(pod).get("metadata"))
        if pod is None or metadata.get("uid") != uid:
            raise Unauthenticated(
                f"pod {namespace}/{name}, to which the token is bound, no longer "
                "exists (deleted or recreated)"
            )
        spec = _mapping(pod.get("spec"))
        if (spec.get("serviceAccountName") or "default") != account:
            raise Unauthenticated(
                f"pod {namespace}/{name} runs as another service account than "
                "the token's"
            )
        return BoundPod(
            namespace=namespace,
            name=name,
            uid=uid,
            service_account=account,
            annotations=_mapping(metadata.get("annotations")),
        )

    async def _call(
        self,
        method: Callable[..., Awaitable[Any]],
        *args: Any,
        missing_ok: bool = False,
    ) -> Any:
        try:
            return await call_json(method, *args, request_timeout=self._kube.timeout)
        except Exception as exc:
            if missing_ok and isinstance(exc, ApiException) and exc.status == 404:
                return None
            # Also a 403 from the API server (the issuer's own RBAC): the
            # sidecar retries 5xx, and the answer turns once RBAC is fixed.
            raise IssuerUnavailable(
                f"the issuer cannot check the token now: {describe_error(exc)}; retry"
            ) from exc


def entitled_identity(
    request: TokenRequest,
    pod: BoundPod,
    namespace: NamespaceInfo | None,
    index: IdentityIndex,
) -> tuple[Identity, str]:
    """The requested identity and the pod's project, if the scope rules give
    the pod exactly that identity for the provider now; else NotEntitled."""
    if namespace is None or namespace.project is None:
        raise NotEntitled(
            f"namespace {pod.namespace} has no workloadidentity.dev/project label, "
            "so it is no project"
        )
    if namespace.excluded:
        raise NotEntitled(f"{namespace.excluded}: no identity serves it")
    opt_out = str(pod.annotations.get(INJECT_ANNOTATION, "")).strip().lower()
    if opt_out == "false":
        raise NotEntitled(f'pod {pod} opts out with {INJECT_ANNOTATION}: "false"')
    selection = index.select(namespace.project, pod_tags(pod.annotations))
    chosen = selection.get(request.provider)
    provider = request.provider.value
    if chosen is None:
        raise NotEntitled(f"no {provider} identity serves pod {pod} now")
    if chosen.name != request.identity:
        raise NotEntitled(
            f"{request.identity} is not the {provider} identity of pod {pod} now: "
            f"the scope rules select {chosen.name}"
        )
    return chosen, namespace.project


class TokenEndpoint:
    """POST /token, without HTTP: headers and body in, status and JSON out."""

    def __init__(self, services: Services, authenticate: PodAuthenticator) -> None:
        self._services = services
        self._authenticate = authenticate

    async def __call__(
        self, headers: Mapping[str, str], body: bytes
    ) -> tuple[int, dict[str, Any]]:
        metrics = self._services.metrics
        provider = "unknown"
        try:
            token = bearer_token(headers.get("Authorization"))
            request = parse_token_request(body)
            provider = request.provider.value
            answer = await self._issue(token, request)
        except TokenRefused as refusal:
            metrics.tokens_issued.labels(provider, refusal.outcome).inc()
            level = logging.WARNING if refusal.status >= 500 else logging.INFO
            log.log(level, "/token refused (%d): %s", refusal.status, refusal)
            return refusal.status, {"error": str(refusal)}
        except Exception:
            metrics.tokens_issued.labels(provider, "error").inc()
            log.exception("/token failed")
            return 500, {"error": "the issuer failed; see its log, and retry"}
        metrics.tokens_issued.labels(provider, "issued").inc()
        return 200, answer

    async def _issue(self, token: str, request: TokenRequest) -> dict[str, Any]:
        services = self._services
        if not services.cache.ready:
            raise IssuerUnavailable(
                "the issuer has not synced identities and namespaces yet; retry"
            )
        pod = await self._authenticate(token)
        try:
            namespace = await namespace_for(services, pod.namespace)
        except Exception as exc:
            raise IssuerUnavailable(
                f"the issuer cannot read namespace {pod.namespace} now: "
                f"{describe_error(exc)}; retry"
            ) from exc
        identity, project = entitled_identity(
            request, pod, namespace, services.cache.index
        )
        started = time.perf_counter()
        signed, expires = services.issuer.issue(
            Subject(
                identity=identity.name,
                project=project,
                namespace=pod.namespace,
                service_account=pod.service_account,
                pod=pod.name,
            ),
            audience=identity.audience,
            lifetime_seconds=identity.expiration_seconds,
        )
        services.metrics.token_sign_duration.observe(time.perf_counter() - started)
        log.info(
            "issued a token for %s (%s) to pod %s (service account %s), expiring at %d",
            identity.name,
            request.provider.value,
            pod,
            pod.service_account,
            expires,
        )
        return {"token": signed, "expiresAt": expires}
