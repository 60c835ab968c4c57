"""`python -m webhook`: serve, review, explain, workloads, issuer, install, verify,
status, demo.

Every flag can also be set by the environment variable shown in its help.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import ssl
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final, TextIO

import yaml

from webhook import admission, logs
from webhook.cache import Cache
from webhook.cli_cloud import CLOUD_COMMANDS, add_cloud_commands, run_cloud_command
from webhook.cli_workloads import (
    WORKLOADS_COMMAND,
    DriftUsageError,
    add_drift_flags,
    add_workloads_command,
    drift_settings,
    run_workloads,
)
from webhook.identities import IdentityFileError, LoadResult, load_identity_file
from webhook.issuer import (
    IssuerConfigError,
    discovery_document,
    load_issuer,
    normalise_issuer,
    public_jwks,
    write_new_key,
)
from webhook.metrics import create_metrics
from webhook.mutation import opts_out
from webhook.namespaces import (
    NamespaceFileError,
    NamespaceInfo,
    describe_namespace,
    load_namespace_file,
)
from webhook.scope import IdentityIndex, pod_tags
from webhook.sidecar_spec import SidecarMode, SidecarSettings, SigningMode
from webhook.tls import ReloadingContext, write_self_signed
from webhook.watch import WatchSettings

log = logging.getLogger(__name__)


class UsageError(Exception):
    """A command that cannot run as given; the message says what to change."""


def _env(name: str, default: str | None = None) -> str | None:
    return os.environ.get(name, default)


def _flag(
    parser: argparse.ArgumentParser, flag: str, env: str, help_text: str, **kwargs: Any
) -> None:
    default = kwargs.pop("default", None)
    parser.add_argument(
        flag, default=_env(env, default), help=f"{help_text} [env {env}]", **kwargs
    )


def _add_rules_flags(parser: argparse.ArgumentParser) -> None:
    _flag(
        parser,
        "--identities",
        "WI_IDENTITIES",
        "YAML file of WorkloadIdentity documents",
    )
    _flag(parser, "--namespaces", "WI_NAMESPACES", "YAML file of Namespace objects")
    _flag(
        parser,
        "--project",
        "WI_PROJECT",
        "treat the pod's namespace as belonging to this project",
    )
    _flag(
        parser,
        "--webhook-namespace",
        "WI_WEBHOOK_NAMESPACE",
        "the webhook's own namespace, never injected",
        default="workload-identity-system",
    )


def _add_sidecar_flags(parser: argparse.ArgumentParser) -> None:
    defaults = SidecarSettings()
    _flag(
        parser,
        "--sidecar-image",
        "WI_SIDECAR_IMAGE",
        "image of the token sidecar",
        default=defaults.image,
    )
    _flag(
        parser, "--sidecar-mode", "WI_SIDECAR_MODE", "native (Kubernetes 1.29+) or legacy",
        default=defaults.mode.value, choices=[m.value for m in SidecarMode],
    )  # fmt: skip
    _flag(
        parser, "--signing-mode", "WI_SIGNING_MODE", "issuer (sidecar asks /token) or key",
        default=defaults.signing.value, choices=[m.value for m in SigningMode],
    )  # fmt: skip
    _flag(
        parser, "--issuer-url", "WI_ISSUER_URL", "the OIDC issuer URL the clouds trust"
    )
    _flag(
        parser, "--issuer-service-url", "WI_ISSUER_SERVICE_URL",
        "where sidecars fetch tokens in issuer mode", default=defaults.issuer_service_url,
    )  # fmt: skip
    _flag(
        parser,
        "--issuer-ca-file",
        "WI_ISSUER_CA_FILE",
        "CA bundle path inside the sidecar for the issuer",
        default="",
    )
    _flag(
        parser,
        "--issuer-ca-bundle",
        "WI_ISSUER_CA_BUNDLE",
        "PEM file of the CA that signed this webhook's serving certificate: "
        "sidecars get its certificates inline (WI_ISSUER_CA) to trust /token",
        default="",
    )
    _flag(
        parser, "--sidecar-key-secret", "WI_SIDECAR_KEY_SECRET",
        "Secret with key.pem for key mode", default=defaults.key_secret,
    )  # fmt: skip
    _flag(
        parser,
        "--gcp-sts-url",
        "WI_GCP_STS_URL",
        "GCP STS token URL",
        default=defaults.gcp_sts_url,
    )
    _flag(
        parser, "--gcp-iam-credentials-url", "WI_GCP_IAM_CREDENTIALS_URL",
        "GCP IAM Credentials API base URL", default=defaults.gcp_iam_credentials_url,
    )  # fmt: skip


def read_ca_bundle(path: str) -> str:
    """The certificates of `path` as PEM text, checked to load as trust anchors.

    Read once, at start: a new CA reaches new pods after the webhook restarts.
    """
    if not path:
        return ""
    try:
        with open(path, encoding="ascii") as stream:
            text = stream.read()
        ssl.create_default_context(cadata=text)
    except (OSError, UnicodeDecodeError, ValueError) as exc:  # SSLError is OSError
        raise UsageError(
            f"--issuer-ca-bundle {path}: cannot use it as the issuer's CA ({exc}); "
            "point it at the ca.crt of the webhook's TLS Secret"
        ) from exc
    if "-----BEGIN CERTIFICATE-----" not in text:
        raise UsageError(
            f"--issuer-ca-bundle {path} holds no PEM certificate; point it at the "
            "ca.crt of the webhook's TLS Secret"
        )
    return text.strip() + "\n"


def sidecar_settings(args: argparse.Namespace, *, issuer_url: str) -> SidecarSettings:
    return SidecarSettings(
        image=args.sidecar_image,
        mode=SidecarMode(args.sidecar_mode),
        signing=SigningMode(args.signing_mode),
        issuer_url=issuer_url,
        issuer_service_url=args.issuer_service_url,
        issuer_ca_file=args.issuer_ca_file,
        issuer_ca_pem=read_ca_bundle(args.issuer_ca_bundle),
        key_secret=args.sidecar_key_secret,
        gcp_sts_url=args.gcp_sts_url,
        gcp_iam_credentials_url=args.gcp_iam_credentials_url,
    )


def load_rules(args: argparse.Namespace, *, strict: bool) -> LoadResult:
    """Identities from --identities; with `strict`, any invalid one is fatal."""
    if not args.identities:
        raise UsageError("no identities: pass --identities FILE (or set WI_IDENTITIES)")
    result = load_identity_file(args.identities)
    for error in result.errors:
        log.error("%s", error)
    if strict and result.errors:
        raise UsageError(
            f"{len(result.errors)} invalid identit{'y' if len(result.errors) == 1 else 'ies'} "
            f"in {args.identities}: fix the field(s) named above"
        )
    return result


def namespace_info(
    args: argparse.Namespace, name: str, known: dict[str, NamespaceInfo]
) -> NamespaceInfo | None:
    if args.project:
        return describe_namespace(
            name,
            {"workloadidentity.dev/project": args.project},
            webhook_namespace=args.webhook_namespace,
        )
    return known.get(name)


def load_namespaces(args: argparse.Namespace) -> dict[str, NamespaceInfo]:
    if not args.namespaces:
        return {}
    return load_namespace_file(
        args.namespaces, webhook_namespace=args.webhook_namespace
    )


def _read_input(path: str | None) -> Any:
    try:
        if path in (None, "-"):
            text = sys.stdin.read()
        else:
            with open(path, encoding="utf-8") as stream:
                text = stream.read()
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}") from exc
    try:
        return json.loads(text)
    except ValueError:
        try:
            return yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise UsageError(
                f"{path or 'stdin'} is neither JSON nor YAML: {exc}"
            ) from exc


def compact(value: Any) -> str:
    """The exact serialization the server writes."""
    return json.dumps(value, separators=(",", ":"))


# --- review -----------------------------------------------------------------


def cmd_review(args: argparse.Namespace, out: TextIO) -> int:
    rules = load_rules(args, strict=True)
    known = load_namespaces(args)
    body = _read_input(args.input)
    review = admission.parse_review(body)
    settings = sidecar_settings(
        args, issuer_url=args.issuer_url or "https://127.0.0.1:8443"
    )
    answer = admission.decide(
        review,
        namespace=namespace_info(args, review.namespace, known),
        index=IdentityIndex(rules.identities),
        settings=settings,
    )
    out.write(compact(answer.review) + "\n")
    return 0


# --- explain ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _PodInput:
    namespace: str
    annotations: dict[str, Any]
    name: str
    opted_out: bool


def _pod_input(body: Any, namespace_flag: str | None) -> _PodInput:
    pod = body
    if isinstance(body, dict) and body.get("kind") == "AdmissionReview":
        pod = (body.get("request") or {}).get("object") or {}
        namespace_flag = namespace_flag or (body.get("request") or {}).get("namespace")
    if (
        not isinstance(pod, dict)
        or not isinstance(pod.get("metadata", {}), dict)
        or pod.get("kind", "Pod") != "Pod"
        or not isinstance(pod.get("spec"), dict)
    ):
        raise UsageError(
            "the input is neither a Pod nor an AdmissionReview with a pod: pass a "
            "Pod manifest (e.g. `kubectl get pod NAME -o yaml`) or an AdmissionReview"
        )
    metadata = pod.get("metadata") or {}
    namespace = namespace_flag or metadata.get("namespace")
    if not namespace:
        raise UsageError("the pod has no namespace: pass --namespace NAME")
    annotations = metadata.get("annotations")
    annotations = annotations if isinstance(annotations, dict) else {}
    return _PodInput(
        str(namespace),
        annotations,
        str(metadata.get("name") or metadata.get("generateName") or "pod"),
        opts_out(metadata),
    )


def explain(args: argparse.Namespace) -> dict[str, Any]:
    rules = load_rules(args, strict=False)
    known = load_namespaces(args)
    pod = _pod_input(_read_input(args.input), args.namespace)
    info = namespace_info(args, pod.namespace, known)
    tags = pod_tags(pod.annotations)
    index = IdentityIndex(rules.identities)
    verdicts = index.explain(info.project if info else None, tags)
    blocked = ""
    if info is None:
        blocked = (
            f"namespace {pod.namespace} is not in the namespaces file {args.namespaces}"
            if args.namespaces
            else f"namespace {pod.namespace} is unknown: pass --namespaces FILE "
            "(e.g. `kubectl get namespaces -o yaml`) or --project P"
        )
    elif info.project is None:
        blocked = (
            f"namespace {pod.namespace} has no workloadidentity.dev/project label, "
            "so it is no project"
        )
    elif info.excluded:
        blocked = f"{info.excluded}: the webhook never injects there"
    elif pod.opted_out:
        blocked = 'the pod opts out with workloadidentity.dev/inject: "false"'
    selection = (
        {}
        if blocked
        else {
            p.value: i.name
            for p, i in index.select(
                info.project if info else None, tags
            ).chosen.items()
        }
    )
    return {
        "pod": pod.name,
        "namespace": pod.namespace,
        "project": info.project if info else None,
        "tags": sorted(tags),
        "blocked": blocked or None,
        "identities": [
            {
                "name": v.identity,
                "description": index.by_name[v.identity].description,
                "provider": v.provider.value,
                "matched": v.matched and not blocked,
                "reason": blocked if blocked else v.reason,
            }
            for v in verdicts
        ],
        "invalid": [
            {"name": fault.document, "field": fault.field_path, "reason": fault.message}
            for e in rules.errors
            for fault in (e, *e.others)
        ],
        "selection": selection,
    }


def cmd_explain(args: argparse.Namespace, out: TextIO) -> int:
    result = explain(args)
    if args.output == "json":
        out.write(json.dumps(result, indent=2) + "\n")
        return 0
    tags = ", ".join(result["tags"]) or "none"
    out.write(
        f"pod {result['pod']} in namespace {result['namespace']} "
        f"(project: {result['project'] or 'none'}, tags: {tags})\n"
    )
    if result["blocked"]:
        out.write(f"  not injected: {result['blocked']}\n")
    for item in result["identities"]:
        mark = "MATCH" if item["matched"] else "no   "
        out.write(f"  {mark} {item['name']} ({item['provider']}): {item['reason']}\n")
        if item["description"]:
            out.write(f"        {item['description']}\n")
    for item in result["invalid"]:
        out.write(f"  INVALID {item['name']}: {item['field']}: {item['reason']}\n")
    for provider in ("aws", "gcp"):
        out.write(
            f"  selected for {provider}: {result['selection'].get(provider, 'none')}\n"
        )
    return 0


# --- issuer -----------------------------------------------------------------


def cmd_issuer(args: argparse.Namespace, out: TextIO) -> int:
    if args.issuer_command == "keygen":
        if not args.out:
            raise UsageError("pass --out FILE: where to write the new key")
        try:
            # A new directory for a key is private too.
            os.makedirs(
                os.path.dirname(os.path.abspath(args.out)), mode=0o700, exist_ok=True
            )
            write_new_key(args.out)
        except FileExistsError:
            raise UsageError(
                f"{args.out} exists; choose another path or remove it first"
            ) from None
        except OSError as exc:
            raise UsageError(
                f"cannot write {args.out}: {exc.strerror}; choose a path you can write"
            ) from exc
        out.write(f"wrote a new RSA-2048 signing key to {args.out} (mode 0600)\n")
        return 0
    if not args.issuer_url:
        raise UsageError(
            "pass --issuer-url https://... (the URL the clouds will fetch)"
        )
    url = normalise_issuer(args.issuer_url)
    if args.issuer_command == "discovery":
        document = discovery_document(url)
    else:
        document = public_jwks(args.signing_key or [], args.public_key or [])
    out.write(json.dumps(document, indent=2) + "\n")
    return 0


# --- serve ------------------------------------------------------------------


def _state_files(
    args: argparse.Namespace, port: int
) -> tuple[str, str, list[str], str]:
    """TLS pair, signing keys and issuer URL, creating local ones in --state-dir."""
    cert, key = args.tls_cert, args.tls_key
    keys = list(args.signing_key or [])
    issuer_url = args.issuer_url
    if args.state_dir:
        os.makedirs(args.state_dir, mode=0o700, exist_ok=True)
        if not cert:
            cert, key = (
                os.path.join(args.state_dir, n) for n in ("tls.crt", "tls.key")
            )
            if not os.path.exists(cert):
                write_self_signed(cert, key, hosts=["127.0.0.1", "localhost"])
                log.info(
                    "created a self-signed serving certificate in %s", args.state_dir
                )
        if not keys:
            path = os.path.join(args.state_dir, "signing-key.pem")
            if not os.path.exists(path):
                write_new_key(path)
                log.info("created a signing key in %s", args.state_dir)
            keys = [path]
        issuer_url = issuer_url or f"https://127.0.0.1:{port}"
    if not cert or not key:
        raise UsageError(
            "no serving certificate: pass --tls-cert and --tls-key, or --state-dir DIR"
        )
    if not issuer_url:
        raise UsageError(
            "no issuer URL: pass --issuer-url https://... or --state-dir DIR"
        )
    return cert, key, keys, issuer_url


def _watch_settings(args: argparse.Namespace) -> WatchSettings:
    try:
        unready_after = float(args.unready_after)
    except ValueError:
        unready_after = -1.0
    if not unready_after > 0:
        raise UsageError(
            f"--unready-after {args.unready_after!r}: give a number of seconds above 0"
        )
    return WatchSettings(unready_after=unready_after)


DEFAULT_SHUTDOWN_DELAY: Final = 5.0
"""Endpoints drop a terminating pod within a few seconds; kube-proxy and the API
server's own endpoint cache follow. Within terminationGracePeriodSeconds (30)
with the drain that follows (up to 2 x 10 s)."""


def _shutdown_delay(args: argparse.Namespace) -> float:
    try:
        delay = float(args.shutdown_delay)
    except ValueError:
        delay = -1.0
    if not 0 <= delay <= 60:
        raise UsageError(
            f"--shutdown-delay {args.shutdown_delay!r}: give seconds from 0 to 60"
        )
    return delay


def cmd_serve(args: argparse.Namespace, out: TextIO) -> int:
    from webhook.server import Services, serve, split_listen

    _, port = split_listen(args.listen)
    if args.source == "kubernetes" and (args.identities or args.namespaces):
        raise UsageError(
            "--identities and --namespaces are read with --source file only; with "
            "--source kubernetes the webhook watches the API server: drop them"
        )
    watch = _watch_settings(args)
    drift = drift_settings(args)
    shutdown_delay = _shutdown_delay(args)
    cert, key, keys, issuer_url = _state_files(args, port)
    issuer = load_issuer(issuer_url, keys)
    cache = Cache(create_metrics())
    settings = sidecar_settings(args, issuer_url=issuer.url)
    tls = ReloadingContext(cert, key)
    if args.source == "kubernetes":
        from webhook.cluster import serve_from_cluster

        log.info(
            "issuer %s with key %s; watching the API server", issuer.url, issuer.kid
        )
        asyncio.run(
            serve_from_cluster(
                kubeconfig=args.kubeconfig or None,
                cache=cache,
                settings=settings,
                issuer=issuer,
                webhook_namespace=args.webhook_namespace,
                watch=watch,
                drift=drift,
                listen=args.listen,
                metrics_listen=args.metrics_listen,
                tls=tls,
                shutdown_delay=shutdown_delay,
            )
        )
        out.write("stopped\n")
        return 0
    rules = load_rules(args, strict=True)
    cache.set_identities(rules.identities, rules.errors)
    cache.set_namespaces(load_namespaces(args))
    services = Services(
        cache=cache, settings=settings, issuer=issuer, metrics=cache.metrics
    )
    log.info(
        "issuer %s with key %s; %d identities loaded",
        issuer.url,
        issuer.kid,
        len(cache.index),
    )
    asyncio.run(
        serve(
            services,
            listen=args.listen,
            metrics_listen=args.metrics_listen,
            tls=tls,
            shutdown_delay=shutdown_delay,
        )
    )
    out.write("stopped\n")
    return 0


# --- parser -----------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m webhook", description=__doc__)
    _flag(
        parser,
        "--log-level",
        "WI_LOG_LEVEL",
        "DEBUG, INFO, WARNING or ERROR",
        default="INFO",
    )
    _flag(
        parser,
        "--log-format",
        "WI_LOG_FORMAT",
        "text or json",
        default="text",
        choices=["text", "json"],
    )
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser(
        "serve", help="serve /mutate, the issuer endpoints and probes over HTTPS"
    )
    _add_rules_flags(serve)
    _add_sidecar_flags(serve)
    _flag(
        serve,
        "--source",
        "WI_SOURCE",
        "where identities and namespaces come from: files (--identities, "
        "--namespaces) or the API server",
        default="file",
        choices=["file", "kubernetes"],
    )
    _flag(
        serve,
        "--kubeconfig",
        "WI_KUBECONFIG",
        "with --source kubernetes: kubeconfig to use outside a cluster "
        "(default: the pod's ServiceAccount)",
        default="",
    )
    _flag(
        serve,
        "--unready-after",
        "WI_UNREADY_AFTER",
        "with --source kubernetes: seconds a watch may fail before the webhook "
        "turns unready",
        default=str(WatchSettings().unready_after),
    )
    add_drift_flags(serve, _flag)
    _flag(
        serve,
        "--shutdown-delay",
        "WI_SHUTDOWN_DELAY",
        "seconds (0 to 60; default 5) to keep serving, unready, after SIGTERM "
        "while the API server stops sending requests here; a second signal skips "
        "the rest of the wait, then requests in flight get up to 20 s",
        default=str(DEFAULT_SHUTDOWN_DELAY),
    )
    _flag(serve, "--listen", "WI_LISTEN", "HTTPS address", default="0.0.0.0:8443")
    _flag(
        serve,
        "--metrics-listen",
        "WI_METRICS_LISTEN",
        "metrics address (plain HTTP)",
        default="0.0.0.0:9090",
    )
    _flag(serve, "--tls-cert", "WI_TLS_CERT", "serving certificate (PEM)")
    _flag(serve, "--tls-key", "WI_TLS_KEY", "serving key (PEM)")
    _flag(
        serve,
        "--state-dir",
        "WI_STATE_DIR",
        "create a self-signed certificate and signing key here",
    )
    serve.add_argument(
        "--signing-key", action="append",
        default=[p for p in (_env("WI_SIGNING_KEYS") or "").split(",") if p],
        help="PEM signing key; repeat to publish more keys, the first signs "
        "[env WI_SIGNING_KEYS, comma separated]",
    )  # fmt: skip

    review = commands.add_parser(
        "review", help="answer one AdmissionReview exactly as the server would"
    )
    _add_rules_flags(review)
    _add_sidecar_flags(review)
    review.add_argument(
        "input", nargs="?", help="AdmissionReview file (JSON or YAML); stdin if absent"
    )

    explain_parser = commands.add_parser(
        "explain", help="why each identity does or does not match a pod"
    )
    _add_rules_flags(explain_parser)
    _flag(
        explain_parser, "--namespace", "WI_POD_NAMESPACE",
        "namespace of the pod, if the manifest has none",
    )  # fmt: skip
    _flag(
        explain_parser, "--output", "WI_OUTPUT", "text or json",
        default="text", choices=["text", "json"],
    )  # fmt: skip
    explain_parser.add_argument(
        "-o",
        dest="output",
        choices=["text", "json"],
        default=argparse.SUPPRESS,
        help=argparse.SUPPRESS,
    )
    explain_parser.add_argument(
        "input", nargs="?", help="Pod or AdmissionReview file; stdin if absent"
    )

    issuer = commands.add_parser(
        "issuer", help="signing keys, discovery document and JWKS"
    )
    issuer_commands = issuer.add_subparsers(dest="issuer_command", required=True)
    keygen = issuer_commands.add_parser("keygen", help="create an RSA-2048 signing key")
    _flag(keygen, "--out", "WI_KEY_OUT", "where to write the PEM key (must not exist)")
    for name in ("discovery", "jwks"):
        sub = issuer_commands.add_parser(
            name, help=f"print the {name} document for hosting elsewhere"
        )
        _flag(sub, "--issuer-url", "WI_ISSUER_URL", "the issuer URL")
        sub.add_argument(
            "--signing-key", action="append",
            default=[p for p in (_env("WI_SIGNING_KEYS") or "").split(",") if p],
            help="PEM private key (repeatable) [env WI_SIGNING_KEYS, comma separated]",
        )  # fmt: skip
        sub.add_argument(
            "--public-key", action="append",
            default=[p for p in (_env("WI_PUBLIC_KEYS") or "").split(",") if p],
            help="PEM public key to publish (repeatable) [env WI_PUBLIC_KEYS, comma separated]",
        )  # fmt: skip

    demo = commands.add_parser(
        "demo", help="run the whole product on 127.0.0.1 and show each step"
    )
    demo.add_argument(
        "--keep", action="store_true", default=_env("WI_DEMO_KEEP", "") == "true",
        help="keep the demo's temporary directory [env WI_DEMO_KEEP=true]",
    )  # fmt: skip
    add_workloads_command(commands, _flag)
    add_cloud_commands(commands, _flag)
    # The logging flags also work after the command (`serve --log-level DEBUG`);
    # SUPPRESS keeps a value given before the command when none comes after.
    for command in commands.choices.values():
        command.add_argument(
            "--log-level", default=argparse.SUPPRESS, help=argparse.SUPPRESS
        )
        command.add_argument(
            "--log-format",
            default=argparse.SUPPRESS,
            choices=["text", "json"],
            help=argparse.SUPPRESS,
        )
    return parser


def main(argv: Sequence[str] | None = None, out: TextIO | None = None) -> int:
    args = build_parser().parse_args(argv)
    logs.configure(args.log_level, args.log_format)
    out = out or sys.stdout
    handlers = {
        "serve": cmd_serve,
        "review": cmd_review,
        "explain": cmd_explain,
        "issuer": cmd_issuer,
    }
    if args.command == WORKLOADS_COMMAND:
        return run_workloads(args, out, sys.stderr)
    if args.command in CLOUD_COMMANDS:
        return run_cloud_command(args, out)
    try:
        if args.command == "demo":
            from webhook.demo.run import run_demo

            return run_demo(keep=args.keep)
        return handlers[args.command](args, out)
    except (
        UsageError,
        IdentityFileError,
        NamespaceFileError,
        IssuerConfigError,
        DriftUsageError,
        admission.MalformedReview,
    ) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
