"""Helpers for the deploy/ tests: paths, rendering, lookups, metric names and
Dockerfile parsing.

A module of its own rather than conftest.py, so that test modules import it
under a name that no other test directory uses.
"""

from __future__ import annotations

import functools
import os
import re
import shlex
import shutil
import subprocess
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
INTERFACES = REPO / "docs" / "interfaces.md"

#: The Kubernetes version the manifests are validated against.
K8S_VERSION = "1.30"

WEBHOOK_NAMESPACE = "workload-identity-system"
WEBHOOK_SA = "workload-identity-webhook"
SERVICE = "workload-identity"
TLS_SECRET = "workload-identity-tls"
SIGNING_SECRET = "workload-identity-signing-key"

#: Every kustomization that renders on its own (components do not).
KUSTOMIZATIONS = (
    "crd",
    "base",
    "overlays/cert-manager",
    "overlays/self-signed",
    "overlays/local-example",
    "examples",
    "monitoring",
)
#: The ones that install a working webhook (base lacks certificates).
INSTALLS = ("overlays/cert-manager", "overlays/self-signed", "overlays/local-example")

Obj = dict[str, Any]


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}


def require_tool(name: str, how: str) -> str:
    """The tool's path. Without it: skip, or fail under CI=true."""
    path = shutil.which(name)
    if path:
        return path
    message = f"{name} is not on PATH; {how}"
    if in_ci():
        pytest.fail(message)
    pytest.skip(message)


@functools.cache
def render(kustomization: str) -> tuple[Obj, ...]:
    """`kubectl kustomize deploy/<kustomization>`, parsed (cached)."""
    kubectl = require_tool("kubectl", "install kubectl 1.27 or newer")
    result = subprocess.run(
        [kubectl, "kustomize", str(DEPLOY / kustomization)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, f"kustomize {kustomization} failed:\n{result.stderr}"
    return tuple(doc for doc in yaml.safe_load_all(result.stdout) if doc)


def of_kind(
    objects: Iterable[Obj], kind: str, name: str | None = None
) -> Iterator[Obj]:
    for obj in objects:
        if obj["kind"] == kind and (name is None or obj["metadata"]["name"] == name):
            yield obj


def only(objects: Iterable[Obj], kind: str, name: str | None = None) -> Obj:
    """The single object of this kind (and name)."""
    found = list(of_kind(objects, kind, name))
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def load_documents(path: Path) -> list[Obj]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def pod_templates(obj: Obj) -> list[Obj]:
    """The pod templates of a workload object; none for other kinds."""
    spec = obj.get("spec", {})
    if obj["kind"] in {"Deployment", "Job", "DaemonSet", "StatefulSet"}:
        return [spec["template"]]
    if obj["kind"] == "CronJob":
        return [spec["jobTemplate"]["spec"]["template"]]
    return []


def webhook_deployment(objects: Iterable[Obj]) -> Obj:
    return only(objects, "Deployment", "workload-identity-webhook")


def container(pod_spec: Obj, name: str) -> Obj:
    matches = [c for c in pod_spec["containers"] if c["name"] == name]
    assert len(matches) == 1, f"no single container {name}"
    return matches[0]


def parse_args(args: list[str]) -> dict[str, list[str]]:
    """`--flag=value` and `--flag value` arguments, by flag (repeatable)."""
    flags: dict[str, list[str]] = {}
    i = 0
    while i < len(args):
        arg = args[i]
        if arg.startswith("--"):
            if "=" in arg:
                flag, value = arg.split("=", 1)
            elif i + 1 < len(args) and not args[i + 1].startswith("--"):
                flag, value = arg, args[i + 1]
                i += 1
            else:
                flag, value = arg, "true"
            flags.setdefault(flag, []).append(value)
        i += 1
    return flags


@functools.cache
def interface_metrics() -> frozenset[str]:
    """Metric names that docs/interfaces.md fixes for the webhook and sidecar."""
    section = INTERFACES.read_text().split("## Metrics", 1)[1].split("\n## ", 1)[0]
    names = re.findall(r"`(workload_identity_[a-z_]+)", section)
    assert names, "no metric names found in docs/interfaces.md"
    return frozenset(names)


@functools.cache
def interface_serve_flags() -> frozenset[str]:
    """The `python -m webhook serve` flags that docs/interfaces.md documents."""
    section = INTERFACES.read_text().split("## Webhook `serve` flags", 1)[1]
    return frozenset(re.findall(r"`(--[a-z-]+)", section))


@functools.cache
def interface_serve_env() -> frozenset[str]:
    section = INTERFACES.read_text().split("## Webhook `serve` flags", 1)[1]
    return frozenset(re.findall(r"\b(WI_[A-Z_]+)", section))


_HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


def metrics_in(expr: str) -> set[str]:
    """The product's metric names that a PromQL expression reads, with the
    histogram suffixes removed."""
    found = set()
    for name in re.findall(r"\bworkload_identity_[a-z_]+", expr):
        for suffix in _HISTOGRAM_SUFFIXES:
            base = name.removesuffix(suffix)
            if name.endswith(suffix) and base in interface_metrics():
                name = base
        found.add(name)
    return found


def the_webhook(kustomization: str) -> Obj:
    config = only(
        render(kustomization), "MutatingWebhookConfiguration", "workload-identity"
    )
    assert [w["name"] for w in config["webhooks"]] == ["pods.workloadidentity.dev"]
    webhook: Obj = config["webhooks"][0]
    return webhook


def selects(selector: Obj, labels: dict[str, str]) -> bool:
    """A Kubernetes label selector, as the API server evaluates it."""
    for key, value in selector.get("matchLabels", {}).items():
        if labels.get(key) != value:
            return False
    for expression in selector.get("matchExpressions", []):
        key, operator = expression["key"], expression["operator"]
        values = expression.get("values", [])
        ok = {
            "In": key in labels and labels[key] in values,
            "NotIn": key not in labels or labels[key] not in values,
            "Exists": key in labels,
            "DoesNotExist": key not in labels,
        }[operator]
        if not ok:
            return False
    return True


# --- Dockerfiles ------------------------------------------------------------


@dataclass
class Stage:
    """One stage of a Dockerfile: its base and its instructions in order."""

    base: str
    name: str | None
    steps: list[tuple[str, str]] = field(default_factory=list)

    def all(self, instruction: str) -> list[str]:
        return [args for kind, args in self.steps if kind == instruction]


def parse_dockerfile(path: Path) -> tuple[dict[str, str], list[Stage]]:
    """Global ARG defaults and the stages, with continuation lines joined."""
    text = re.sub(r"\\\n", " ", path.read_text())
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        instruction, _, rest = line.partition(" ")
        instruction = instruction.upper()
        if instruction == "FROM":
            words = rest.split()
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            stages.append(Stage(base=words[0], name=name))
        elif not stages and instruction == "ARG":
            key, _, value = rest.partition("=")
            args[key] = value
        else:
            stages[-1].steps.append((instruction, rest.strip()))
    return args, stages


def resolve_args(base: str, args: dict[str, str]) -> str:
    """A FROM line's image with the global ARGs substituted."""
    return re.sub(r"\$\{?(\w+)\}?", lambda m: args[m.group(1)], base)


def copied_sources(stage: Stage) -> set[str]:
    """The first path component of every COPY source taken from the context."""
    found = set()
    for args in stage.all("COPY"):
        words = shlex.split(args)
        if any(w.startswith("--from") for w in words):
            continue
        sources = [w for w in words[:-1] if not w.startswith("--")]
        found |= {s.strip("/").split("/")[0] for s in sources}
    return found
