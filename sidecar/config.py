"""Validate raw `Settings` and turn them into the runtime `Config`.

Validation collects every problem before it fails, and each message quotes the
flag and environment variable and says what to set, so one run shows the user
everything to fix.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal
from urllib.parse import urlsplit

from oidc_tokens import claims, gcp, paths
from sidecar import schedule
from sidecar.settings import Settings, where

Provider = Literal["aws", "gcp"]
LogFormat = Literal["text", "json"]

PROVIDERS: Final[tuple[Provider, ...]] = ("aws", "gcp")
MAX_TICK_SECONDS: Final = 60.0
"""Longer ticks would let a resumed node hold an expired token for too long."""

_TRUE: Final = frozenset({"1", "true", "yes", "on"})
_FALSE: Final = frozenset({"0", "false", "no", "off"})
# Kubernetes object names (DNS subdomains): identity names end up in `sub`,
# whose parts are separated by colons, so nothing else may pass.
_OBJECT_NAME: Final = re.compile(r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?")
_LOG_LEVELS: Final = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


class ConfigError(ValueError):
    """The settings cannot work; `problems` lists every reason, one per line."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__(
            "invalid configuration:\n" + "\n".join(f"  - {p}" for p in problems)
        )


@dataclass(frozen=True, slots=True)
class CompanionFile:
    """A file written next to a token whose content never changes."""

    path: Path
    content: bytes


@dataclass(frozen=True, slots=True)
class ProviderConfig:
    """One cloud the pod was given: which identity, and which files hold it."""

    provider: Provider
    identity: str
    audience: str
    expiration_seconds: int
    """Lifetime of tokens signed in key mode; in issuer mode the issuer decides."""
    token_path: Path
    companion_files: tuple[CompanionFile, ...] = ()
    """GCP's credential configuration, which the SDKs read to find the token."""

    @property
    def file_names(self) -> list[str]:
        return [f.path.name for f in self.companion_files] + [self.token_path.name]


@dataclass(frozen=True, slots=True)
class PodInfo:
    """Who holds the tokens; in key mode these become claims."""

    project: str
    namespace: str
    name: str
    service_account: str


@dataclass(frozen=True, slots=True)
class KeyMode:
    """Sign locally with a mounted PEM key."""

    issuer: str
    key_file: Path


@dataclass(frozen=True, slots=True)
class IssuerMode:
    """Present the pod's ServiceAccount token to the issuer service."""

    token_url: str
    ca_file: Path | None
    sa_token_file: Path
    ca_pem: str = ""
    """Certificates given inline (WI_ISSUER_CA), trusted besides `ca_file`."""


@dataclass(frozen=True, slots=True)
class Config:
    """Everything the sidecar runs with, validated and typed."""

    signing: KeyMode | IssuerMode
    providers: tuple[ProviderConfig, ...]
    pod: PodInfo
    oneshot: bool
    token_dir: Path
    file_mode: int
    listen_host: str
    listen_port: int
    ready_margin_seconds: float
    tick_seconds: float
    log_format: LogFormat
    log_level: str

    @property
    def mode(self) -> Literal["key", "issuer"]:
        return "key" if isinstance(self.signing, KeyMode) else "issuer"


def validate(settings: Settings) -> Config:
    """The runtime config for `settings`, or a ConfigError listing every problem."""
    check = _Checker(settings)
    mode = check.choice("mode", ("key", "issuer"))
    # Absolute, because the GCP credential configuration names the token file
    # for SDKs that run in other containers and other working directories.
    token_dir = Path(
        check.required("token_dir", "point it at the token volume")
    ).absolute()
    providers = _providers(check, token_dir)
    signing = _key_mode(check) if mode == "key" else _issuer_mode(check)
    pod = _pod(check, key_mode=mode == "key")
    host, port = _listen(check)
    margin = check.number("ready_margin_seconds", low=0.0)
    config = Config(
        signing=signing,
        providers=providers,
        pod=pod,
        oneshot=check.boolean("oneshot"),
        token_dir=token_dir,
        file_mode=_file_mode(check),
        listen_host=host,
        listen_port=port,
        ready_margin_seconds=margin,
        tick_seconds=_tick(check),
        log_format=_log_format(check),
        log_level=_log_level(check),
    )
    _check_margin(check, margin, providers)
    if check.problems:
        raise ConfigError(check.problems)
    return config


class _Checker:
    """Reads raw values and records what is wrong with them."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.problems: list[str] = []

    def raw(self, name: str) -> str:
        return str(getattr(self.settings, name)).strip()

    def problem(self, name: str, message: str) -> None:
        self.problems.append(f"{where(name)}: {message}")

    def required(self, name: str, hint: str) -> str:
        value = self.raw(name)
        if not value:
            self.problem(name, f"is required; {hint}")
        return value

    def choice(self, name: str, allowed: tuple[str, ...]) -> str:
        value = self.raw(name).lower()
        if value not in allowed:
            self.problem(name, f"{value!r} is not one of: {', '.join(allowed)}")
            return allowed[0]
        return value

    def boolean(self, name: str) -> bool:
        value = self.raw(name).lower()
        if value not in _TRUE | _FALSE:
            self.problem(name, f"{value!r} is not a boolean; use true or false")
        return value in _TRUE

    def integer(self, name: str, *, low: int, high: int) -> int:
        value = self.raw(name)
        try:
            number = int(value)
        except ValueError:
            self.problem(name, f"{value!r} is not a whole number of seconds")
            return low
        if not low <= number <= high:
            self.problem(name, f"{number} is outside the range {low}..{high}")
        return number

    def number(self, name: str, *, low: float, high: float | None = None) -> float:
        value = self.raw(name)
        try:
            number = float(value)
        except ValueError:
            self.problem(name, f"{value!r} is not a number of seconds")
            return low
        if number < low or (high is not None and number > high) or number != number:
            limit = f"{low:g}..{high:g}" if high is not None else f"at least {low:g}"
            self.problem(name, f"{value} is out of range; use {limit}")
        return number

    def url(self, name: str, *, https_only: bool) -> str:
        value = self.raw(name)
        parts = urlsplit(value)
        schemes = ("https",) if https_only else ("https", "http")
        if parts.scheme not in schemes or not parts.hostname:
            wanted = "an https:// URL" if https_only else "an http(s):// URL"
            self.problem(name, f"{value!r} is not {wanted} with a host")
        return value

    def identity(self, name: str) -> str:
        value = self.raw(name)
        if value and not _OBJECT_NAME.fullmatch(value):
            self.problem(
                name,
                f"{value!r} is not a WorkloadIdentity name (lower-case letters, "
                "digits, '-' and '.')",
            )
        return value


def _providers(check: _Checker, token_dir: Path) -> tuple[ProviderConfig, ...]:
    aws_identity = check.identity("aws_identity")
    gcp_identity = check.identity("gcp_identity")
    if not aws_identity and not gcp_identity:
        check.problems.append(
            f"no provider configured: set {where('aws_identity')} and/or "
            f"{where('gcp_identity')} to the WorkloadIdentity name (the webhook "
            "sets them on the sidecar it injects)"
        )
    providers: list[ProviderConfig] = []
    if aws_identity:
        providers.append(_aws(check, aws_identity, token_dir))
    if gcp_identity:
        providers.append(_gcp(check, gcp_identity, token_dir))
    return tuple(providers)


def _lifetime(check: _Checker, name: str) -> int:
    return check.integer(
        name, low=claims.MIN_LIFETIME_SECONDS, high=claims.MAX_LIFETIME_SECONDS
    )


def _aws(check: _Checker, identity: str, token_dir: Path) -> ProviderConfig:
    return ProviderConfig(
        provider="aws",
        identity=identity,
        audience=check.required("aws_audience", "the default is sts.amazonaws.com"),
        expiration_seconds=_lifetime(check, "aws_expiration_seconds"),
        token_path=token_dir / paths.AWS_TOKEN_FILE,
    )


def _gcp(check: _Checker, identity: str, token_dir: Path) -> ProviderConfig:
    audience = check.required(
        "gcp_audience",
        "set it to //iam.googleapis.com/projects/N/locations/global/"
        "workloadIdentityPools/POOL/providers/PROVIDER",
    )
    sts_url = check.url("gcp_sts_url", https_only=False)
    iam_url = check.url("gcp_iam_credentials_url", https_only=False)
    service_account = check.raw("gcp_service_account")
    if service_account and "@" not in service_account:
        check.problem(
            "gcp_service_account",
            f"{service_account!r} is not a service account email "
            "(NAME@PROJECT.iam.gserviceaccount.com)",
        )
    token_path = token_dir / paths.GCP_TOKEN_FILE
    companions: tuple[CompanionFile, ...] = ()
    if audience:
        try:
            document = gcp.credential_config(
                audience=audience,
                token_file=paths.in_token_dir(paths.GCP_TOKEN_FILE, str(token_dir)),
                service_account_email=service_account,
                sts_url=sts_url,
                iam_credentials_url=iam_url,
            )
        except ValueError as exc:
            check.problem("gcp_audience", f"{exc}; use the provider's full name")
        else:
            content = json.dumps(document, indent=2, sort_keys=True) + "\n"
            path = token_dir / paths.GCP_CREDENTIALS_FILE
            companions = (CompanionFile(path, content.encode()),)
    return ProviderConfig(
        provider="gcp",
        identity=identity,
        audience=audience,
        expiration_seconds=_lifetime(check, "gcp_expiration_seconds"),
        token_path=token_path,
        companion_files=companions,
    )


def _key_mode(check: _Checker) -> KeyMode:
    issuer = check.required(
        "issuer",
        "set it to the issuer URL the clouds trust, e.g. https://oidc.example.com",
    )
    if issuer:
        check.url("issuer", https_only=True)
    key_file = check.required("key_file", "mount the PEM signing key and name it")
    return KeyMode(issuer=issuer, key_file=Path(key_file))


def _issuer_mode(check: _Checker) -> IssuerMode:
    url = check.required(
        "issuer_token_url",
        "set it to the issuer service's https://.../token URL, or use --mode key",
    )
    if url:
        check.url("issuer_token_url", https_only=True)
    ca_file = check.raw("issuer_ca_file")
    sa_token_file = check.required(
        "sa_token_file", "mount a projected ServiceAccount token and name it"
    )
    ca_pem = check.raw("issuer_ca")
    if ca_pem and "-----BEGIN CERTIFICATE-----" not in ca_pem:
        check.problem(
            "issuer_ca",
            "holds no PEM certificate (-----BEGIN CERTIFICATE-----); give the "
            "issuer's CA certificates, or leave it empty",
        )
    return IssuerMode(
        token_url=url,
        ca_file=Path(ca_file) if ca_file else None,
        sa_token_file=Path(sa_token_file),
        ca_pem=ca_pem,
    )


def _pod(check: _Checker, *, key_mode: bool) -> PodInfo:
    hint = "in key mode it becomes a claim; the webhook sets it from the downward API"
    project = check.required("project", hint) if key_mode else check.raw("project")
    namespace = (
        check.required("namespace", hint) if key_mode else check.raw("namespace")
    )
    service_account = check.required("service_account", "the default is 'default'")
    # `sub` joins these with colons, so a colon would let one pod pose as another.
    for name in ("project", "namespace", "service_account"):
        if ":" in check.raw(name):
            check.problem(name, "must not contain ':'")
    return PodInfo(
        project=project,
        namespace=namespace,
        name=check.raw("pod_name"),
        service_account=service_account,
    )


def _file_mode(check: _Checker) -> int:
    value = check.raw("file_mode")
    try:
        mode = int(value.removeprefix("0o"), 8)
    except ValueError:
        check.problem("file_mode", f"{value!r} is not an octal mode such as 0644")
        return 0o644
    if mode > 0o777:
        check.problem("file_mode", f"{value} has bits beyond 0777; use e.g. 0644")
    elif mode & 0o022:
        check.problem(
            "file_mode",
            f"{value} lets other users replace the tokens; use 0644 (apps read "
            "as any uid) or 0640 (apps share the sidecar's group)",
        )
    return mode


def _listen(check: _Checker) -> tuple[str, int]:
    value = check.raw("listen")
    host, sep, port_text = value.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not sep or not port_text.isdigit() or int(port_text) > 65535:
        check.problem(
            "listen", f"{value!r} is not HOST:PORT, e.g. 0.0.0.0:15090 or [::]:15090"
        )
        return "", 0
    # An empty host means every interface: the kubelet probes the pod IP.
    return host or "0.0.0.0", int(port_text)  # noqa: S104


def _tick(check: _Checker) -> float:
    tick = check.number("tick_seconds", low=0.0, high=MAX_TICK_SECONDS)
    if tick == 0:
        check.problem("tick_seconds", "must be more than 0; the default is 1")
    return tick


def _check_margin(
    check: _Checker, margin: float, providers: tuple[ProviderConfig, ...]
) -> None:
    for provider in providers:
        # What a key-mode token has left when it is replaced (iat is backdated).
        left = (1 - schedule.REFRESH_AT_FRACTION) * (
            provider.expiration_seconds + claims.CLOCK_SKEW_SECONDS
        )
        if margin >= left:
            check.problem(
                "ready_margin_seconds",
                f"{margin:g} s is not below the {left:g} s that a "
                f"{provider.expiration_seconds} s {provider.provider} token has left "
                "when it is replaced, so /readyz would fail before every refresh; "
                "lower it",
            )


def _log_format(check: _Checker) -> LogFormat:
    return "json" if check.choice("log_format", ("text", "json")) == "json" else "text"


def _log_level(check: _Checker) -> str:
    level = check.raw("log_level").upper()
    if level not in _LOG_LEVELS or not isinstance(logging.getLevelName(level), int):
        check.problem(
            "log_level", f"{level!r} is not a log level; use {', '.join(_LOG_LEVELS)}"
        )
        return "INFO"
    return level
