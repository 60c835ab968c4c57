"""The token sidecar the webhook adds to a pod, described as plain dicts.

The sidecar's environment doubles as the record of what the webhook injected
(role ARN, region, session name, GCP project): on reinvocation the webhook
reads it back to tell its own env entries from the user's.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Final

from oidc_tokens.gcp import DEFAULT_IAM_CREDENTIALS_URL, DEFAULT_STS_URL
from oidc_tokens.paths import TOKEN_DIR
from webhook.identities import Identity

SIDECAR_NAME: Final = "workload-identity"
INIT_NAME: Final = "workload-identity-init"
TOKEN_VOLUME: Final = "workload-identity-token"
MARKER_ENV: Final = "WI_TOKEN_DIR"
"""Every container the webhook adds sets this; user containers never do."""
KEY_MOUNT_DIR: Final = "/etc/workloadidentity/signing"
SA_TOKEN_DIR: Final = "/var/run/secrets/workloadidentity.dev-sa"
PORT: Final = 15090
PORT_NAME: Final = "wi-metrics"


class SidecarMode(StrEnum):
    NATIVE = "native"
    """An init container with restartPolicy Always (Kubernetes 1.29+)."""
    LEGACY = "legacy"
    """A one-shot init container plus an ordinary sidecar container."""


class SigningMode(StrEnum):
    ISSUER = "issuer"
    KEY = "key"


@dataclass(frozen=True, slots=True)
class SidecarSettings:
    """How the injected sidecar is built; one instance per webhook process."""

    image: str = "ghcr.io/workload-identity/sidecar:0.1.0"
    mode: SidecarMode = SidecarMode.NATIVE
    signing: SigningMode = SigningMode.ISSUER
    issuer_url: str = "https://127.0.0.1:8443"
    """The `iss` claim in key mode."""
    issuer_service_url: str = (
        "https://workload-identity.workload-identity-system.svc/token"
    )
    """Where the sidecar fetches tokens in issuer mode."""
    issuer_ca_file: str = ""
    """Path of the issuer's CA bundle inside the sidecar, if not system trust."""
    issuer_ca_pem: str = ""
    """The issuer's CA certificates, given to the sidecar inline: no file of the
    webhook's namespace can be mounted into a pod of another namespace."""
    key_secret: str = "workload-identity-signing-key"
    """Secret holding `key.pem`, mounted into the sidecar alone (key mode)."""
    gcp_sts_url: str = DEFAULT_STS_URL
    gcp_iam_credentials_url: str = DEFAULT_IAM_CREDENTIALS_URL
    resources: dict[str, Any] = field(
        default_factory=lambda: {
            # Measured: ~25 MiB resident in issuer mode, ~32 MiB in key mode.
            "requests": {"cpu": "5m", "memory": "32Mi"},
            "limits": {"memory": "64Mi"},
        }
    )


@dataclass(frozen=True, slots=True)
class PodContext:
    """What the sidecar needs to know about the pod it serves."""

    project: str
    session_name: str
    aws: Identity | None
    gcp: Identity | None


def _env(name: str, value: str) -> dict[str, Any]:
    return {"name": name, "value": value}


def _field_env(name: str, field_path: str) -> dict[str, Any]:
    return {
        "name": name,
        "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": field_path}},
    }


def sidecar_env(
    settings: SidecarSettings, context: PodContext, *, oneshot: bool
) -> list[dict[str, Any]]:
    env = [
        _env("WI_MODE", settings.signing.value),
        _env(MARKER_ENV, TOKEN_DIR),
        _env("WI_PROJECT", context.project),
        _field_env("WI_NAMESPACE", "metadata.namespace"),
        _field_env("WI_POD_NAME", "metadata.name"),
        _field_env("WI_SERVICE_ACCOUNT", "spec.serviceAccountName"),
        _env("WI_LISTEN", f"0.0.0.0:{PORT}"),
    ]
    if oneshot:
        env.append(_env("WI_ONESHOT", "true"))
    if settings.signing is SigningMode.KEY:
        env += [
            _env("WI_ISSUER", settings.issuer_url),
            _env("WI_KEY_FILE", f"{KEY_MOUNT_DIR}/key.pem"),
        ]
    else:
        env += [
            _env("WI_ISSUER_TOKEN_URL", settings.issuer_service_url),
            _env("WI_SA_TOKEN_FILE", f"{SA_TOKEN_DIR}/token"),
        ]
        if settings.issuer_ca_file:
            env.append(_env("WI_ISSUER_CA_FILE", settings.issuer_ca_file))
        if settings.issuer_ca_pem:
            env.append(_env("WI_ISSUER_CA", settings.issuer_ca_pem))
    if context.aws is not None and context.aws.aws is not None:
        aws = context.aws.aws
        env += [
            _env("WI_AWS_IDENTITY", context.aws.name),
            _env("WI_AWS_AUDIENCE", aws.audience),
            _env("WI_AWS_EXPIRATION_SECONDS", str(context.aws.expiration_seconds)),
            _env("WI_AWS_ROLE_ARN", aws.role_arn),
            _env("WI_AWS_SESSION_NAME", context.session_name),
        ]
        if aws.region:
            env.append(_env("WI_AWS_REGION", aws.region))
    if context.gcp is not None and context.gcp.gcp is not None:
        gcp = context.gcp.gcp
        env += [
            _env("WI_GCP_IDENTITY", context.gcp.name),
            _env("WI_GCP_AUDIENCE", gcp.audience),
            _env("WI_GCP_EXPIRATION_SECONDS", str(context.gcp.expiration_seconds)),
            _env("WI_GCP_STS_URL", settings.gcp_sts_url),
            _env("WI_GCP_IAM_CREDENTIALS_URL", settings.gcp_iam_credentials_url),
        ]
        if gcp.service_account_email:
            env.append(_env("WI_GCP_SERVICE_ACCOUNT", gcp.service_account_email))
        if gcp.project_id:
            env.append(_env("WI_GCP_PROJECT_ID", gcp.project_id))
    return env


def _security_context() -> dict[str, Any]:
    # Pod Security "restricted" at container level, so the sidecar is admitted
    # whatever the pod's own securityContext says.
    return {
        "runAsNonRoot": True,
        "runAsUser": 65532,
        "runAsGroup": 65532,
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def _probe(path: str, *, period: int, failures: int) -> dict[str, Any]:
    # Every field the API server would default is spelled out, so a pod read
    # back on reinvocation compares equal to what the webhook would add now.
    return {
        "httpGet": {"path": path, "port": PORT, "scheme": "HTTP"},
        "periodSeconds": period,
        "failureThreshold": failures,
        "timeoutSeconds": 1,
        "successThreshold": 1,
    }


def volume_mounts(token_volume: str, settings: SidecarSettings) -> list[dict[str, Any]]:
    mounts: list[dict[str, Any]] = [{"name": token_volume, "mountPath": TOKEN_DIR}]
    if settings.signing is SigningMode.KEY:
        mounts.append(
            {
                "name": f"{token_volume}-key",
                "mountPath": KEY_MOUNT_DIR,
                "readOnly": True,
            }
        )
    else:
        mounts.append(
            {"name": f"{token_volume}-sa", "mountPath": SA_TOKEN_DIR, "readOnly": True}
        )
    return mounts


def pod_volumes(token_volume: str, settings: SidecarSettings) -> list[dict[str, Any]]:
    """The token volume plus the sidecar's credential to sign or fetch tokens."""
    token = {"name": token_volume, "emptyDir": {"medium": "Memory", "sizeLimit": "1Mi"}}
    if settings.signing is SigningMode.KEY:
        aux: dict[str, Any] = {
            "name": f"{token_volume}-key",
            # Secret files are owned by root and the sidecar runs as 65532
            # without an fsGroup (the pod's own setting is the user's), so the
            # key must be world-readable; only the sidecar mounts this volume.
            "secret": {"secretName": settings.key_secret, "defaultMode": 0o444},
        }
    else:
        aux = {
            "name": f"{token_volume}-sa",
            "projected": {
                "defaultMode": 0o444,
                "sources": [
                    {
                        "serviceAccountToken": {
                            "audience": settings.issuer_url,
                            "expirationSeconds": 3600,
                            "path": "token",
                        }
                    }
                ],
            },
        }
    return [token, aux]


def sidecar_containers(
    settings: SidecarSettings,
    context: PodContext,
    *,
    token_volume: str,
    restart_policy: str,
) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """(init container, ordinary container) to add, per the sidecar mode.

    Native mode: one init container with restartPolicy Always, whose
    startupProbe holds back every later container until the tokens are valid.
    Legacy mode: a one-shot init container writes the first tokens; an
    ordinary sidecar refreshes them, except in pods that run to completion
    (restartPolicy Never/OnFailure), where a long-running container would
    keep the pod from ever finishing.
    """
    base = {
        "image": settings.image,
        "imagePullPolicy": "IfNotPresent",
        "volumeMounts": volume_mounts(token_volume, settings),
        "resources": settings.resources,
        "securityContext": _security_context(),
    }
    if settings.mode is SidecarMode.NATIVE:
        native = {
            "name": SIDECAR_NAME,
            **base,
            "env": sidecar_env(settings, context, oneshot=False),
            "restartPolicy": "Always",
            "ports": [{"name": PORT_NAME, "containerPort": PORT, "protocol": "TCP"}],
            "startupProbe": _probe("/readyz", period=1, failures=120),
            "livenessProbe": _probe("/healthz", period=10, failures=3),
        }
        return native, None
    init = {
        "name": INIT_NAME,
        **base,
        "env": sidecar_env(settings, context, oneshot=True),
    }
    if restart_policy in ("Never", "OnFailure"):
        return init, None
    ordinary = {
        "name": SIDECAR_NAME,
        **base,
        "env": sidecar_env(settings, context, oneshot=False),
        "ports": [{"name": PORT_NAME, "containerPort": PORT, "protocol": "TCP"}],
        "readinessProbe": _probe("/readyz", period=5, failures=3),
        "livenessProbe": _probe("/healthz", period=10, failures=3),
    }
    return init, ordinary
