"""`python -m webhook workloads`, and the `serve` flags of the drift report."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
from collections.abc import Callable
from typing import Final, TextIO

from webhook.drift import survey
from webhook.identities import IdentityFileError
from webhook.inventory import Inventory, InventoryError, read_cluster, read_files
from webhook.kube import KubeConfigError, connect, load_configuration
from webhook.leader import DEFAULT_LEASE_DURATION, DEFAULT_LEASE_NAME, LeaseSettings
from webhook.namespaces import NamespaceFileError
from webhook.pods import served_namespace
from webhook.reconciler import DriftSettings
from webhook.scope import IdentityIndex
from webhook.workloads import Filters, render_text, workloads_report

WORKLOADS_COMMAND: Final = "workloads"
DEFAULT_WEBHOOK_NAMESPACE: Final = "workload-identity-system"
EXIT_UNREADABLE: Final = 1
EXIT_USAGE: Final = 2

WORKLOADS_HELP: Final = """\
Per identity, the pods that hold it (by their workloadidentity.dev/aws and
/gcp annotations); per pod, what it holds against what the rules give it now;
and the drift: missing (should hold an identity, does not), stale (holds one
the rules no longer give it) and orphaned (holds one that no longer exists).

In a cluster it reads through the API (--kubeconfig, else $KUBECONFIG or
~/.kube/config, else the pod's ServiceAccount); with --pods FILE it reads
manifests instead, e.g. `kubectl get namespaces,replicasets,pods -A -o yaml`.
"""

Flag = Callable[..., None]
"""webhook.cli._flag: a flag whose default comes from an environment variable."""


class DriftUsageError(ValueError):
    """A flag value that cannot be used; the message says what to change."""


def _bool(value: object, what: str) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise DriftUsageError(f"{what} {value!r}: use true or false")


def _env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


# --- serve ------------------------------------------------------------------


def add_drift_flags(parser: argparse.ArgumentParser, flag: Flag) -> None:
    """serve's flags for the drift report (with --source kubernetes)."""
    flag(
        parser,
        "--drift-interval",
        "WI_DRIFT_INTERVAL",
        "with --source kubernetes: seconds between drift reports; 0 turns the "
        "report (and its pod watch) off",
        default="60",
    )
    parser.add_argument(
        "--leader-election",
        action=argparse.BooleanOptionalAction,
        default=os.environ.get("WI_LEADER_ELECTION", "true"),
        help="only the replica holding the Lease reports drift; without it "
        "every replica does [env WI_LEADER_ELECTION]",
    )
    flag(
        parser,
        "--lease-name",
        "WI_LEASE_NAME",
        "name of the drift report's Lease",
        default=DEFAULT_LEASE_NAME,
    )
    flag(
        parser,
        "--lease-namespace",
        "WI_LEASE_NAMESPACE",
        "namespace of the Lease (default: the webhook's namespace)",
    )
    flag(
        parser,
        "--lease-duration",
        "WI_LEASE_DURATION",
        "seconds without renewal after which another replica takes the Lease",
        default=str(DEFAULT_LEASE_DURATION),
    )


def drift_settings(args: argparse.Namespace) -> DriftSettings:
    try:
        interval = float(args.drift_interval)
    except ValueError:
        interval = -1.0
    if not interval >= 0:
        raise DriftUsageError(
            f"--drift-interval {args.drift_interval!r}: give seconds (0 turns it off)"
        )
    duration = str(args.lease_duration).strip()
    if not duration.isdigit() or int(duration) < 2:
        raise DriftUsageError(
            f"--lease-duration {args.lease_duration!r}: give whole seconds, 2 or more"
        )
    seconds = int(duration)
    lease = LeaseSettings(
        name=args.lease_name,
        namespace=args.lease_namespace or args.webhook_namespace,
        lease_duration=seconds,
        # client-go's proportions (15, 10, 2), with the library's floor of 1 s.
        renew_deadline=seconds * 2 / 3,
        retry_period=max(1.0, seconds * 2 / 15),
    )
    return DriftSettings(
        interval=interval,
        leader_election=_bool(args.leader_election, "--leader-election"),
        lease=lease,
    )


# --- workloads --------------------------------------------------------------


def add_workloads_command(
    commands: argparse._SubParsersAction,  # type: ignore[type-arg]
    flag: Flag,
) -> None:
    parser = commands.add_parser(
        WORKLOADS_COMMAND,
        help="which pods hold which identity, and the drift from the rules now",
        description=WORKLOADS_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--pods",
        action="append",
        default=[p for p in os.environ.get("WI_PODS", "").split(",") if p],
        help="read pods from this manifest file (repeatable; Lists, Namespaces "
        "and ReplicaSets in it are read too) instead of the API server "
        "[env WI_PODS, comma separated]",
    )
    flag(
        parser,
        "--identities",
        "WI_IDENTITIES",
        "with --pods: YAML file of WorkloadIdentity documents",
    )
    flag(
        parser,
        "--namespaces",
        "WI_NAMESPACES",
        "with --pods: YAML file of Namespace objects",
    )
    flag(
        parser,
        "--kubeconfig",
        "WI_KUBECONFIG",
        "without --pods: kubeconfig to use (default: $KUBECONFIG or "
        "~/.kube/config, or the pod's ServiceAccount inside a cluster)",
    )
    flag(
        parser,
        "--webhook-namespace",
        "WI_WEBHOOK_NAMESPACE",
        "the webhook's own namespace, never injected",
        default=DEFAULT_WEBHOOK_NAMESPACE,
    )
    flag(parser, "--identity", "WI_IDENTITY", "only this identity")
    flag(parser, "--project", "WI_WORKLOADS_PROJECT", "only pods of this project")
    flag(
        parser,
        "--namespace",
        "WI_WORKLOADS_NAMESPACE",
        "only pods of this namespace (in a cluster, only it is read)",
    )
    parser.add_argument(
        "--drift",
        action="store_true",
        default=_env_true("WI_WORKLOADS_DRIFT"),
        help="list drifted pods only [env WI_WORKLOADS_DRIFT]",
    )
    parser.add_argument(
        "--all",
        dest="every_pod",
        action="store_true",
        default=_env_true("WI_WORKLOADS_ALL"),
        help="list every running pod, also those that neither hold nor should "
        "hold an identity [env WI_WORKLOADS_ALL]",
    )
    parser.add_argument(
        "-o",
        "--output",
        choices=["text", "json"],
        default=os.environ.get("WI_WORKLOADS_OUTPUT", "text"),
        help="text, or json for scripts [env WI_WORKLOADS_OUTPUT]",
    )


def _in_pod() -> bool:
    return "KUBERNETES_SERVICE_HOST" in os.environ


async def _read_cluster(args: argparse.Namespace) -> Inventory:
    configuration = await load_configuration(
        args.kubeconfig or None, in_cluster=_in_pod()
    )
    async with connect(configuration) as kube:
        return await read_cluster(
            kube, webhook_namespace=args.webhook_namespace, namespace=args.namespace
        )


def inventory(args: argparse.Namespace) -> Inventory:
    if args.pods:
        if not args.identities:
            raise DriftUsageError(
                "--pods needs --identities FILE: the rules to compare the pods with"
            )
        return read_files(
            args.pods,
            identities_file=args.identities,
            namespaces_file=args.namespaces,
            webhook_namespace=args.webhook_namespace,
        )
    if args.identities or args.namespaces:
        raise DriftUsageError(
            "--identities and --namespaces are read with --pods only; without "
            "--pods everything is read from the API server: drop them"
        )
    return asyncio.run(_read_cluster(args))


def report(
    found: Inventory, filters: Filters, *, webhook_namespace: str
) -> dict[str, object]:
    index = IdentityIndex(found.identities.identities)
    invalid = frozenset(error.document for error in found.identities.errors)
    pods = [p for p in found.pods if served_namespace(p.namespace, webhook_namespace)]
    assessments = survey(pods, found.namespaces, index, invalid=invalid)
    return workloads_report(
        assessments,
        identities=index.identities,
        invalid=invalid,
        workload=lambda a: found.workload(a.pod),
        filters=filters,
    )


def run_workloads(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    filters = Filters(
        identity=args.identity or None,
        project=args.project or None,
        namespace=args.namespace or None,
        drift_only=bool(args.drift),
        every_pod=bool(args.every_pod),
    )
    try:
        found = inventory(args)
    except (DriftUsageError, IdentityFileError, NamespaceFileError) as exc:
        print(f"error: {exc}", file=err)
        return EXIT_USAGE
    except (InventoryError, KubeConfigError) as exc:
        print(f"error: {exc}", file=err)
        return EXIT_UNREADABLE
    for error in found.identities.errors:
        print(f"warning: {error} (treated as not existing)", file=err)
    result = report(found, filters, webhook_namespace=args.webhook_namespace)
    if args.output == "json":
        out.write(json.dumps(result, indent=2) + "\n")
    else:
        out.write(render_text(result))
    return 0
