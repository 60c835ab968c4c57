"""`python -m webhook install|verify|status`: the cloud side of identities.

install  creates or updates what each identity needs in AWS or GCP (OIDC
         provider or workload identity pool, role or service account, trust
         and permissions) and records what it installed; --dry-run prints
         every call and changes nothing.
verify   checks it, without changing anything: exit 0 when everything is
         right, 1 when something is wrong, 3 when something could not be
         read (missing read permission: the setup may still be right).
status   lists every identity as installed, pending or failed, with what
         changed since the last install.

Identities come from a YAML file (--source file, the default; install records
into --state-file) or from the cluster (--source kubernetes; install records
into each WorkloadIdentity's status, which `kubectl get workloadidentities`
shows in its Installed column).
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import json
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Final, TextIO

from webhook.cloud.cluster_state import ClusterError, cluster_identities
from webhook.cloud.errors import CloudError
from webhook.cloud.install import Clouds, CloudSide, Installer, statuses, verify
from webhook.cloud.plan import Check
from webhook.cloud.report import IdentityStatus, InstallState, render_status
from webhook.cloud.spec import InstallOptions, ProviderSetup
from webhook.cloud.state import LocalStateFile, StateFileError, StatusStore
from webhook.identities import (
    Identity,
    IdentityError,
    IdentityFileError,
    LoadResult,
    Provider,
    load_identity_file,
)
from webhook.issuer import IssuerConfigError, normalise_issuer
from webhook.kube import KubeConfigError

CLOUD_COMMANDS: Final = ("install", "verify", "status")
DEFAULT_STATE_FILE: Final = "workload-identity-state.json"
EXIT_UNVERIFIED: Final = 3

Flag = Callable[..., None]
"""webhook.cli._flag: a flag whose default comes from an environment variable."""


class CloudUsageError(Exception):
    """The command cannot run as given; the message says what to change."""


def _env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def _common(parser: argparse.ArgumentParser, flag: Flag) -> None:
    flag(
        parser,
        "--source",
        "WI_SOURCE",
        "where identities come from: a file (--identities) or the API server",
        default="file",
        choices=["file", "kubernetes"],
    )
    flag(
        parser,
        "--identities",
        "WI_IDENTITIES",
        "with --source file: YAML file of WorkloadIdentity documents",
    )
    flag(
        parser,
        "--kubeconfig",
        "WI_KUBECONFIG",
        "with --source kubernetes: kubeconfig to use (default: $KUBECONFIG or "
        "~/.kube/config, or the pod's ServiceAccount inside a cluster)",
    )
    flag(
        parser, "--issuer-url", "WI_ISSUER_URL", "the OIDC issuer URL the clouds trust"
    )
    flag(
        parser, "--identity", "WI_IDENTITY", "only this identity (default: all of them)"
    )
    flag(
        parser,
        "--provider-setup",
        "WI_PROVIDER_SETUP",
        "automatic: create the OIDC provider or pool; manual: print what to create",
        default=ProviderSetup.AUTOMATIC.value,
        choices=[s.value for s in ProviderSetup],
    )
    flag(
        parser,
        "--jwks-file",
        "WI_JWKS_FILE",
        "GCP: upload this JWKS inline, for an issuer Google cannot reach "
        "(`python -m webhook issuer jwks` prints it)",
    )


def _cloud_flags(parser: argparse.ArgumentParser, flag: Flag) -> None:
    flag(
        parser,
        "--aws-endpoint-url",
        "WI_AWS_ENDPOINT_URL",
        "AWS API endpoint (IAM and STS); default: the real AWS",
    )
    parser.add_argument(
        "--thumbprint", action="append",
        default=[t for t in os.environ.get("WI_OIDC_THUMBPRINTS", "").split(",") if t],
        help="AWS: certificate thumbprint for the OIDC provider, optional, repeatable "
        "[env WI_OIDC_THUMBPRINTS, comma separated]",
    )  # fmt: skip
    flag(
        parser,
        "--gcp-iam-url",
        "WI_GCP_IAM_URL",
        "Google IAM API base URL",
        default="https://iam.googleapis.com",
    )
    flag(
        parser,
        "--gcp-resource-manager-url",
        "WI_GCP_RESOURCE_MANAGER_URL",
        "Google Cloud Resource Manager API base URL",
        default="https://cloudresourcemanager.googleapis.com",
    )


def _state_flag(parser: argparse.ArgumentParser, flag: Flag) -> None:
    flag(
        parser,
        "--state-file",
        "WI_STATE_FILE",
        "with --source file: where install records what it installed (JSON, mode "
        f"0600; default {DEFAULT_STATE_FILE})",
    )


def add_cloud_commands(commands: Any, flag: Flag) -> None:
    """Register install, verify and status on `python -m webhook`'s subparsers."""
    install = commands.add_parser(
        "install",
        help="create or update the cloud side of identities (provider, role, permissions)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _common(install, flag)
    _cloud_flags(install, flag)
    _state_flag(install, flag)
    install.add_argument(
        "--dry-run",
        action="store_true",
        default=_env_true("WI_DRY_RUN"),
        help="print every call install would make, make none [env WI_DRY_RUN]",
    )
    install.set_defaults(cloud_command=cmd_install)

    check = commands.add_parser(
        "verify",
        help="check the cloud side of identities; changes nothing",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _common(check, flag)
    _cloud_flags(check, flag)
    check.set_defaults(cloud_command=cmd_verify)

    status = commands.add_parser(
        "status",
        help="installed, pending or failed, per identity, from the state file or "
        "the cluster",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _common(status, flag)
    _state_flag(status, flag)
    flag(
        status,
        "--output",
        "WI_STATUS_OUTPUT",
        "text or json",
        default="text",
        choices=["text", "json"],
    )
    status.set_defaults(cloud_command=cmd_status)


# --- shared set-up ----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Source:
    """The identities to work on and where install records what it did."""

    identities: list[Identity]
    errors: list[IdentityError]
    """The invalid documents among those asked for."""
    store: StatusStore
    where: str
    """Where the record is kept, for the closing line."""
    lists_removed: bool
    """A record without an identity means the identity was removed (a file);
    in a cluster the record goes with the object, so it cannot outlive it."""


def _chosen(
    args: argparse.Namespace, loaded: LoadResult, err: TextIO
) -> tuple[list[Identity], list[IdentityError]]:
    """The identities asked for, and the invalid documents among them."""
    errors = list(loaded.errors)
    chosen = list(loaded.identities)
    if args.identity:
        chosen = [i for i in chosen if i.name == args.identity]
        errors = [e for e in errors if e.document == args.identity]
        if not chosen and not errors:
            where = args.identities if args.source == "file" else "the cluster"
            raise CloudUsageError(f"no identity named {args.identity} in {where}")
    for error in errors:
        err.write(f"error: {error}\n")
    return chosen, errors


@contextlib.contextmanager
def _source(args: argparse.Namespace, err: TextIO) -> Iterator[Source]:
    state_file = getattr(args, "state_file", None)
    if args.source == "kubernetes":
        if args.identities or state_file:
            # Often exported for earlier file-based runs; --source says which wins.
            err.write(
                "note: ignoring --identities and --state-file (WI_IDENTITIES, "
                "WI_STATE_FILE): with --source kubernetes identities come from the "
                "API server and install records into their status\n"
            )
        in_pod = "KUBERNETES_SERVICE_HOST" in os.environ
        with cluster_identities(args.kubeconfig or None, in_cluster=in_pod) as found:
            identities, errors = _chosen(args, found.loaded, err)
            yield Source(
                identities,
                errors,
                found.store,
                "the WorkloadIdentities' status",
                lists_removed=False,
            )
        return
    if not args.identities:
        raise CloudUsageError(
            "no identities: pass --identities FILE (or set WI_IDENTITIES), or "
            "--source kubernetes to read them from the cluster"
        )
    path = state_file or DEFAULT_STATE_FILE
    identities, errors = _chosen(args, load_identity_file(args.identities), err)
    yield Source(identities, errors, LocalStateFile(path), path, lists_removed=True)


def _jwks(path: str | None) -> str | None:
    if not path:
        return None
    try:
        with open(path, encoding="utf-8") as stream:
            body = json.load(stream)
    except OSError as exc:
        raise CloudUsageError(
            f"cannot read --jwks-file {path}: {exc.strerror}"
        ) from exc
    except ValueError as exc:
        raise CloudUsageError(f"--jwks-file {path} is not JSON: {exc}") from exc
    if not isinstance(body, dict) or not isinstance(body.get("keys"), list):
        raise CloudUsageError(
            f"--jwks-file {path} is not a JWKS (an object with a keys list); "
            "`python -m webhook issuer jwks` prints one"
        )
    return json.dumps(body, sort_keys=True, separators=(",", ":"))


def _options(args: argparse.Namespace) -> InstallOptions:
    if not args.issuer_url:
        raise CloudUsageError(
            "no issuer URL: pass --issuer-url https://... (or set WI_ISSUER_URL)"
        )
    try:
        setup = ProviderSetup(args.provider_setup)
    except ValueError:
        raise CloudUsageError(
            f"--provider-setup {args.provider_setup!r}: use automatic or manual"
        ) from None
    return InstallOptions(
        issuer_url=normalise_issuer(args.issuer_url),
        setup=setup,
        thumbprints=tuple(getattr(args, "thumbprint", None) or ()),
        jwks_json=_jwks(args.jwks_file),
    )


def issuer_is_private(issuer_url: str) -> bool:
    """An issuer on a loopback, private or cluster-internal address, which
    neither AWS nor Google can fetch keys from."""
    host = issuer_url.removeprefix("https://").split("/", 1)[0].rsplit(":", 1)[0]
    host = host.strip("[]")
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host == "localhost" or host.endswith(
            (".local", ".svc", ".internal", ".localhost")
        )
    return not address.is_global


def issuer_warnings(
    args: argparse.Namespace, options: InstallOptions, identities: Sequence[Identity]
) -> list[str]:
    if not issuer_is_private(options.issuer_url):
        return []
    warnings = []
    providers = {identity.provider for identity in identities}
    if Provider.AWS in providers and not args.aws_endpoint_url:
        warnings.append(
            f"warning: AWS cannot reach the issuer {options.issuer_url}: serve its discovery "
            "document and JWKS on a public HTTPS URL, or token exchanges will fail"
        )
    if (
        Provider.GCP in providers
        and options.jwks_json is None
        and args.gcp_iam_url.endswith("googleapis.com")
    ):
        warnings.append(
            f"warning: Google cannot reach the issuer {options.issuer_url}: pass --jwks-file "
            "to upload the JWKS inline, or serve the issuer publicly"
        )
    return warnings


def _clouds(args: argparse.Namespace) -> Clouds:
    def aws() -> CloudSide:
        from webhook.cloud.aws import AwsCloud

        return AwsCloud(endpoint_url=args.aws_endpoint_url or None)

    def gcp() -> CloudSide:
        from webhook.cloud.gcp import GcpCloud, authorized_session

        return GcpCloud(
            authorized_session(),
            iam_url=args.gcp_iam_url,
            resource_manager_url=args.gcp_resource_manager_url,
        )

    return Clouds({Provider.AWS: aws, Provider.GCP: gcp})


# --- commands ---------------------------------------------------------------


def cmd_install(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    options = _options(args)
    with _source(args, err) as source:
        for warning in issuer_warnings(args, options, source.identities):
            err.write(warning + "\n")
        store = None if args.dry_run else source.store
        installer = Installer(options, _clouds(args), store, out, dry_run=args.dry_run)
        outcomes = installer.run(source.identities)
    failed = [o.identity for o in outcomes if not o.ok]
    changed = [o.identity for o in outcomes if o.ok and o.changed]
    if args.dry_run:
        out.write(
            f"\ndry run: {len(changed)} identit{'y' if len(changed) == 1 else 'ies'} "
            f"would change, {len(failed)} cannot be installed; nothing was changed\n"
        )
    else:
        out.write(
            f"\n{len(outcomes) - len(failed)} installed ({len(changed)} changed), "
            f"{len(failed)} failed{': ' + ', '.join(failed) if failed else ''}; "
            f"recorded in {source.where}\n"
        )
    return 1 if failed or source.errors else 0


def cmd_verify(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    options = _options(args)
    with _source(args, err) as source:
        worst = verify(source.identities, options, _clouds(args), out)
    if worst is Check.WRONG or source.errors:
        return 1
    if worst is Check.UNKNOWN:
        out.write(
            "\nsome checks could not be made (see UNKNOWN above: no read permission, "
            "no credentials, or the cloud out of reach); nothing that was read is wrong\n"
        )
        return EXIT_UNVERIFIED
    return 0


def cmd_status(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    options = _options(args)
    with _source(args, err) as source:
        records = source.store.load()
    found = [
        *statuses(source.identities, options, records),
        *(invalid_status(error) for error in source.errors),
    ]
    found.sort(key=lambda status: status.name)
    known = {identity.name for identity in source.identities}
    orphans = (
        []
        if args.identity or not source.lists_removed
        else [r for n, r in sorted(records.items()) if n not in known]
    )
    if args.output == "json":
        body = {
            "identities": [status.to_json() for status in found],
            "removed": [record.identity for record in orphans],
        }
        out.write(json.dumps(body, indent=2) + "\n")
    else:
        for line in render_status(found, orphans):
            out.write(line + "\n")
    return 1 if source.errors else 0


def invalid_status(error: IdentityError) -> IdentityStatus:
    """An identity whose document is invalid: nothing can be installed for it."""
    return IdentityStatus(
        error.document, "?", InstallState.FAILED, f"invalid spec: {error.faults()}"
    )


def run_cloud_command(args: argparse.Namespace, out: TextIO) -> int:
    """Run install, verify or status; errors are printed with what to do."""
    try:
        code: int = args.cloud_command(args, out, sys.stderr)
    except (
        CloudUsageError,
        IdentityFileError,
        IssuerConfigError,
        KubeConfigError,
        StateFileError,
    ) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (CloudError, ClusterError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return code
