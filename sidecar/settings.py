"""The sidecar's settings as the user gives them, before any validation.

Every field is one flag and one environment variable, both named after the
field: `token_dir` is `--token-dir` and `WI_TOKEN_DIR`. Messages take the names
from here, so they can never quote a setting that does not exist.

Precedence, highest first: the flag, the environment variable, the default.
An empty environment variable counts as unset, because manifests often render
optional values as "".
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from oidc_tokens import gcp, paths

ENV_PREFIX: Final = "WI_"


def _setting(default: str, help: str, *, metavar: str = "VALUE") -> Any:
    return field(default=default, metadata={"help": help, "metavar": metavar})


@dataclass(frozen=True, slots=True)
class Settings:
    """Raw values, all strings, exactly as given on the command line or in env."""

    mode: str = _setting(
        "issuer",
        "key: sign tokens locally with --key-file; "
        "issuer: fetch them from --issuer-token-url",
        metavar="key|issuer",
    )
    oneshot: str = _setting(
        "false",
        "write the first tokens, then exit 0 (init container for clusters "
        "older than 1.29); exit 1 if that fails",
        metavar="BOOL",
    )
    token_dir: str = _setting(
        paths.TOKEN_DIR,
        "directory (the shared memory volume) that receives aws-token, "
        "gcp-token and gcp-credentials.json",
        metavar="DIR",
    )
    file_mode: str = _setting(
        "0644",
        "octal mode of every file written; group and other must not have write",
        metavar="OCTAL",
    )
    issuer: str = _setting(
        "",
        "the `iss` claim: the issuer URL the clouds trust (required in key mode)",
        metavar="URL",
    )
    key_file: str = _setting(
        "/etc/workloadidentity/signing/key.pem",
        "PEM private key, RSA 2048+ (RS256) or P-256 (ES256), for key mode; "
        "reloaded when the file changes",
        metavar="FILE",
    )
    issuer_token_url: str = _setting(
        "",
        "https URL of the issuer's /token endpoint (required in issuer mode)",
        metavar="URL",
    )
    issuer_ca_file: str = _setting(
        "",
        "CA bundle that verifies the issuer's TLS certificate "
        "(empty: the system trust store)",
        metavar="FILE",
    )
    issuer_ca: str = _setting(
        "",
        "PEM certificates, inline, that verify the issuer's TLS certificate "
        "besides --issuer-ca-file or the system trust store (the webhook sets it "
        "to its own CA)",
        metavar="PEM",
    )
    sa_token_file: str = _setting(
        "/var/run/secrets/workloadidentity.dev-sa/token",
        "projected ServiceAccount token presented to the issuer; re-read "
        "for every request",
        metavar="FILE",
    )
    aws_identity: str = _setting(
        "", "WorkloadIdentity name for AWS (empty: no AWS token)", metavar="NAME"
    )
    aws_audience: str = _setting("sts.amazonaws.com", "`aud` of the AWS token")
    aws_expiration_seconds: str = _setting(
        "3600", "lifetime of an AWS token signed in key mode", metavar="SECONDS"
    )
    gcp_identity: str = _setting(
        "", "WorkloadIdentity name for GCP (empty: no GCP token)", metavar="NAME"
    )
    gcp_audience: str = _setting(
        "",
        "full resource name of the workload identity pool provider: "
        "//iam.googleapis.com/projects/N/locations/global/"
        "workloadIdentityPools/POOL/providers/PROVIDER",
        metavar="AUDIENCE",
    )
    gcp_service_account: str = _setting(
        "",
        "service account email to impersonate (empty: use the federated "
        "identity directly)",
        metavar="EMAIL",
    )
    gcp_expiration_seconds: str = _setting(
        "3600", "lifetime of a GCP token signed in key mode", metavar="SECONDS"
    )
    gcp_sts_url: str = _setting(
        gcp.DEFAULT_STS_URL,
        "token_url of the GCP credential configuration",
        metavar="URL",
    )
    gcp_iam_credentials_url: str = _setting(
        gcp.DEFAULT_IAM_CREDENTIALS_URL,
        "IAM Credentials base URL for service account impersonation",
        metavar="URL",
    )
    project: str = _setting(
        "", "project of the pod's namespace (claim; required in key mode)"
    )
    namespace: str = _setting(
        "", "the pod's namespace, from the downward API (required in key mode)"
    )
    pod_name: str = _setting("", "the pod's name, from the downward API")
    service_account: str = _setting(
        "default", "the pod's ServiceAccount, from the downward API", metavar="NAME"
    )
    listen: str = _setting(
        "0.0.0.0:15090",
        "HOST:PORT of /healthz, /readyz and /metrics (the kubelet probes the "
        "pod IP, so keep 0.0.0.0 in a pod)",
        metavar="HOST:PORT",
    )
    ready_margin_seconds: str = _setting(
        "5",
        "/readyz fails for a token with less than this left",
        metavar="SECONDS",
    )
    tick_seconds: str = _setting(
        "1",
        "how often the wall-clock refresh deadlines are checked",
        metavar="SECONDS",
    )
    log_format: str = _setting("text", "text or json", metavar="text|json")
    log_level: str = _setting("INFO", "DEBUG, INFO, WARNING or ERROR", metavar="LEVEL")

    @classmethod
    def resolve(
        cls, flags: Mapping[str, str | None], environ: Mapping[str, str]
    ) -> Settings:
        """Pick each value from the flag, else the environment, else the default."""
        values: dict[str, str] = {}
        for item in dataclasses.fields(cls):
            given = flags.get(item.name)
            from_env = environ.get(env_var(item.name), "")
            if given is not None:
                values[item.name] = given
            elif from_env:
                values[item.name] = from_env
        return cls(**values)


def names() -> list[str]:
    return [item.name for item in dataclasses.fields(Settings)]


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def env_var(name: str) -> str:
    return ENV_PREFIX + name.upper()


def where(name: str) -> str:
    """How a message names a setting: `--token-dir / WI_TOKEN_DIR`."""
    return f"{flag(name)} / {env_var(name)}"


def help_text(name: str) -> str:
    item = next(item for item in dataclasses.fields(Settings) if item.name == name)
    return str(item.metadata["help"])


def metavar(name: str) -> str:
    item = next(item for item in dataclasses.fields(Settings) if item.name == name)
    return str(item.metadata["metavar"])


def default(name: str) -> str:
    return str(getattr(Settings(), name))


def likely_typos(environ: Mapping[str, str]) -> dict[str, str]:
    """`WI_` variables that are no setting but look like one: {given: meant}.

    Other unknown `WI_` variables pass silently: the webhook records what it
    injected (role ARN, region, session name) in the sidecar's environment.
    """
    known = [env_var(name) for name in names()]
    typos = {}
    for key in sorted(environ):
        if key.startswith(ENV_PREFIX) and key not in known:
            close = difflib.get_close_matches(key, known, n=1, cutoff=0.85)
            if close:
                typos[key] = close[0]
    return typos
