"""Pod mutation: from a pod and a selection to narrow JSON Patch operations.

Pure functions over the raw pod dict. The webhook never rebuilds a list it
does not own: it appends, replaces or removes single entries, so fields it
does not know pass through untouched. Whole objects are written only for what
the webhook owns (its sidecar, its volumes, an absent list or map).

Ownership on reinvocation: an env entry belongs to the webhook when its value
is the one the webhook injected, as recorded in its own sidecar's environment
(for fixed paths, the path itself). Everything else belongs to the user and is
kept as it is, with a warning when it holds a variable the webhook would set.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from oidc_tokens.paths import (
    AWS_TOKEN_FILE,
    GCP_CREDENTIALS_FILE,
    TOKEN_DIR,
    in_token_dir,
)
from webhook import pointer
from webhook.identities import Identity, Provider
from webhook.pointer import Op
from webhook.scope import Selection
from webhook.sidecar_spec import (
    INIT_NAME,
    MARKER_ENV,
    SIDECAR_NAME,
    TOKEN_VOLUME,
    PodContext,
    SidecarMode,
    SidecarSettings,
    pod_volumes,
    sidecar_containers,
)

ANNOTATION_PREFIX: Final = "workloadidentity.dev/"
SKIP_ANNOTATION: Final = "workloadidentity.dev/skip-containers"
INJECT_ANNOTATION: Final = "workloadidentity.dev/inject"
AWS_TOKEN_PATH: Final = in_token_dir(AWS_TOKEN_FILE)
GCP_CREDENTIALS_PATH: Final = in_token_dir(GCP_CREDENTIALS_FILE)

# Variables whose webhook value is a fixed path, so the value alone proves
# the webhook wrote it.
_FIXED_VALUES: Final = {
    "AWS_WEB_IDENTITY_TOKEN_FILE": AWS_TOKEN_PATH,
    "GOOGLE_APPLICATION_CREDENTIALS": GCP_CREDENTIALS_PATH,
    "CLOUDSDK_AUTH_CREDENTIAL_FILE_OVERRIDE": GCP_CREDENTIALS_PATH,
    "AWS_STS_REGIONAL_ENDPOINTS": "regional",
}
# Variables whose webhook value depends on the identity, and the sidecar env
# entry that records the value the webhook injected.
_RECORDED_IN: Final = {
    "AWS_ROLE_ARN": "WI_AWS_ROLE_ARN",
    "AWS_ROLE_SESSION_NAME": "WI_AWS_SESSION_NAME",
    "AWS_REGION": "WI_AWS_REGION",
    "AWS_DEFAULT_REGION": "WI_AWS_REGION",
    "GOOGLE_CLOUD_PROJECT": "WI_GCP_PROJECT_ID",
}
MANAGED_VARIABLES: Final = frozenset(_FIXED_VALUES) | frozenset(_RECORDED_IN)
_SESSION_CHARS = re.compile(r"[^\w+=,.@-]", re.ASCII)


def opts_out(metadata: Mapping[str, Any]) -> bool:
    """Whether the pod opted out with `workloadidentity.dev/inject: "false"`,
    as an annotation (the design's word) or as a label (what the webhook
    registration's objectSelector reads, so the API server never calls us)."""
    for key in ("annotations", "labels"):
        values = metadata.get(key)
        if isinstance(values, Mapping) and (
            str(values.get(INJECT_ANNOTATION, "")).strip().lower() == "false"
        ):
            return True
    return False


@dataclass(slots=True)
class Mutation:
    patch: list[Op] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def session_name(namespace: str, metadata: Mapping[str, Any]) -> str:
    """A valid STS RoleSessionName (2-64 of [\\w+=,.@-]) naming the workload.

    Pods created by controllers have only `generateName` at admission, so the
    workload's name prefix is used; CloudTrail then shows which workload asked.
    """
    name = metadata.get("name") or str(metadata.get("generateName") or "").rstrip("-.")
    raw = f"{namespace}.{name}" if name else f"{namespace}.pod"
    cleaned = _SESSION_CHARS.sub("-", raw)[:64]
    return cleaned if len(cleaned) >= 2 else f"{cleaned}--"[:2]


def desired_env(selection: Selection, session: str) -> dict[str, str]:
    """Every variable the selection injects, before user settings are honoured."""
    env: dict[str, str] = {}
    aws_identity = selection.get(Provider.AWS)
    if aws_identity is not None and aws_identity.aws is not None:
        aws = aws_identity.aws
        env["AWS_ROLE_ARN"] = aws.role_arn
        env["AWS_WEB_IDENTITY_TOKEN_FILE"] = AWS_TOKEN_PATH
        env["AWS_ROLE_SESSION_NAME"] = session
        if aws.region:
            env["AWS_REGION"] = aws.region
            env["AWS_DEFAULT_REGION"] = aws.region
            env["AWS_STS_REGIONAL_ENDPOINTS"] = "regional"
    gcp_identity = selection.get(Provider.GCP)
    if gcp_identity is not None and gcp_identity.gcp is not None:
        env["GOOGLE_APPLICATION_CREDENTIALS"] = GCP_CREDENTIALS_PATH
        env["CLOUDSDK_AUTH_CREDENTIAL_FILE_OVERRIDE"] = GCP_CREDENTIALS_PATH
        if gcp_identity.gcp.project_id:
            env["GOOGLE_CLOUD_PROJECT"] = gcp_identity.gcp.project_id
    return env


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _as_dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _is_ours(container: Mapping[str, Any]) -> bool:
    name = container.get("name")
    return (
        isinstance(name, str)
        and name.startswith(SIDECAR_NAME)
        and any(
            _as_dict(e).get("name") == MARKER_ENV
            for e in _as_list(container.get("env"))
        )
    )


def _norm(path: Any) -> str:
    return str(path).rstrip("/") or "/"


@dataclass(slots=True)
class _Existing:
    """What an earlier invocation of the webhook left in the pod."""

    containers: list[tuple[str, int, dict[str, Any]]] = field(default_factory=list)
    """(list key, index, container) of each container the webhook owns."""
    token_volume: str | None = None
    recorded: dict[str, str] = field(default_factory=dict)
    """The sidecar's env: the values the webhook injected last time."""


def _find_existing(spec: Mapping[str, Any]) -> _Existing:
    found = _Existing()
    for key in ("initContainers", "containers"):
        for index, container in enumerate(_as_list(spec.get(key))):
            if isinstance(container, dict) and _is_ours(container):
                found.containers.append((key, index, container))
                for entry in _as_list(container.get("env")):
                    entry = _as_dict(entry)
                    if isinstance(entry.get("value"), str):
                        found.recorded.setdefault(entry["name"], entry["value"])
                for mount in _as_list(container.get("volumeMounts")):
                    mount = _as_dict(mount)
                    if _norm(mount.get("mountPath")) == TOKEN_DIR:
                        found.token_volume = str(mount.get("name"))
    return found


def _owned_value(name: str, recorded: Mapping[str, str]) -> str | None:
    if name in _FIXED_VALUES:
        return _FIXED_VALUES[name]
    source = _RECORDED_IN.get(name)
    return recorded.get(source) if source else None


def _pick_volume_name(spec: Mapping[str, Any], existing: _Existing) -> str:
    if existing.token_volume:
        return existing.token_volume
    names = (_as_dict(v).get("name") for v in _as_list(spec.get("volumes")))
    taken = {name for name in names if isinstance(name, str)}
    candidate, suffix = TOKEN_VOLUME, 1
    while {candidate, f"{candidate}-key", f"{candidate}-sa"} & taken:
        candidate, suffix = f"{TOKEN_VOLUME}-{suffix}", suffix + 1
    return candidate


def _skip_list(annotations: Mapping[str, Any]) -> frozenset[str]:
    raw = annotations.get(SKIP_ANNOTATION)
    if not isinstance(raw, str):
        return frozenset()
    return frozenset(name.strip() for name in raw.split(",") if name.strip())


def _mount_conflict(container: Mapping[str, Any], volume: str) -> str | None:
    """A user mount at or below the token directory, which ours would shadow."""
    for mount in _as_list(container.get("volumeMounts")):
        if not isinstance(mount, dict):
            continue
        where = _norm(mount.get("mountPath", ""))
        if mount.get("name") == volume and where == TOKEN_DIR:
            continue
        if where == TOKEN_DIR or where.startswith(TOKEN_DIR + "/"):
            return where
    return None


def _container_env_ops(
    where: tuple[str, int],
    container: Mapping[str, Any],
    wanted: Mapping[str, str],
    recorded: Mapping[str, str],
    warnings: list[str],
) -> list[Op]:
    """Env changes for one container: replaces, then removals from the end,
    then appends, so every index refers to the list as it is at that step."""
    key, index = where
    env = container.get("env")
    entries = _as_list(env)
    name = container.get("name")
    user_gac = False
    seen: set[str] = set()
    replaces: list[Op] = []
    removals: list[int] = []
    for position, entry in enumerate(entries):
        # Runs over every env entry of every container: no helper calls for
        # the entries that are not ours to look at.
        if not isinstance(entry, dict):
            continue
        var = entry.get("name")
        if not isinstance(var, str) or var not in MANAGED_VARIABLES or var in seen:
            continue
        seen.add(var)
        ours = "valueFrom" not in entry and entry.get("value") == _owned_value(
            var, recorded
        )
        if not ours:
            if var == "GOOGLE_APPLICATION_CREDENTIALS":
                user_gac = True
            if var in wanted:
                warnings.append(
                    f"container {name!r} sets {var} itself; workload-identity kept "
                    "the container's value and did not inject its own"
                )
            continue
        if var not in wanted:
            removals.append(position)
        elif entry.get("value") != wanted[var]:
            replaces.append(
                pointer.replace(
                    pointer.path("spec", key, index, "env", position, "value"),
                    wanted[var],
                )
            )
    if user_gac and "CLOUDSDK_AUTH_CREDENTIAL_FILE_OVERRIDE" in wanted:
        # gcloud and the client libraries should use the same credential: the
        # container chose its own, so gcloud is not pointed elsewhere.
        wanted = {
            k: v
            for k, v in wanted.items()
            if k != "CLOUDSDK_AUTH_CREDENTIAL_FILE_OVERRIDE"
        }
        for position, raw in enumerate(entries):
            entry = _as_dict(raw)
            if (
                entry.get("name") == "CLOUDSDK_AUTH_CREDENTIAL_FILE_OVERRIDE"
                and entry.get("value") == GCP_CREDENTIALS_PATH
                and position not in removals
            ):
                removals.append(position)
                replaces = [
                    op
                    for op in replaces
                    if not op["path"].endswith(f"/env/{position}/value")
                ]
    ops = replaces
    ops += [
        pointer.remove(pointer.path("spec", key, index, "env", p))
        for p in sorted(removals, reverse=True)
    ]
    additions = [
        {"name": var, "value": value}
        for var, value in wanted.items()
        if var not in seen
    ]
    ops += _append(
        pointer.path("spec", key, index, "env"),
        env,
        additions,
    )
    return ops


def _append(list_path: str, current: Any, items: Sequence[Any]) -> list[Op]:
    """Append items to a list, creating the list when it is absent."""
    if not items:
        return []
    if not isinstance(current, list):
        return [pointer.add(list_path, list(items))]
    return [pointer.add(f"{list_path}/-", item) for item in items]


def _container_mount_ops(
    where: tuple[str, int], container: Mapping[str, Any], volume: str, wanted: bool
) -> list[Op]:
    key, index = where
    mounts = container.get("volumeMounts")
    ours = [
        position
        for position, mount in enumerate(_as_list(mounts))
        if _as_dict(mount).get("name") == volume
        and _norm(_as_dict(mount).get("mountPath")) == TOKEN_DIR
    ]
    if wanted and ours:
        return []
    if wanted:
        mount = {"name": volume, "mountPath": TOKEN_DIR, "readOnly": True}
        return _append(
            pointer.path("spec", key, index, "volumeMounts"), mounts, [mount]
        )
    return [
        pointer.remove(pointer.path("spec", key, index, "volumeMounts", p))
        for p in reversed(ours)
    ]


def _user_containers(
    spec: Mapping[str, Any],
) -> Iterator[tuple[tuple[str, int], dict[str, Any]]]:
    for key in ("initContainers", "containers"):
        for index, container in enumerate(_as_list(spec.get(key))):
            if isinstance(container, dict) and not _is_ours(container):
                yield (key, index), container


def _contains(actual: Any, wanted: Any) -> bool:
    """Whether `actual` holds everything in `wanted`; fields the API server
    defaulted into `actual` are ignored."""
    if isinstance(wanted, dict):
        return isinstance(actual, dict) and all(
            _contains(actual.get(k), v) for k, v in wanted.items()
        )
    if isinstance(wanted, list):
        return (
            isinstance(actual, list)
            and len(actual) == len(wanted)
            and all(_contains(a, w) for a, w in zip(actual, wanted, strict=True))
        )
    return bool(actual == wanted)


def _sidecar_ops(
    spec: Mapping[str, Any],
    existing: _Existing,
    desired: Sequence[tuple[str, dict[str, Any]]],
) -> list[Op]:
    """Bring the webhook's own containers to `desired` ((list key, container)).

    Runs after every per-container operation, because inserting at the front
    of initContainers shifts the indices those operations use.
    """
    ops: list[Op] = []
    current = {
        (key, c.get("name")): (index, c) for key, index, c in existing.containers
    }
    wanted = {(key, c["name"]) for key, c in desired}
    # Remove what is no longer wanted, from the end so indices stay valid.
    stale = sorted(
        (
            (key, index)
            for (key, name), (index, _) in current.items()
            if (key, name) not in wanted
        ),
        key=lambda item: (item[0], -item[1]),
    )
    init_removed = [index for key, index in stale if key == "initContainers"]
    ops += [pointer.remove(pointer.path("spec", key, index)) for key, index in stale]
    for key, container in desired:
        found = current.get((key, container["name"]))
        if key == "initContainers":
            if found is not None:
                index = found[0] - sum(1 for r in init_removed if r < found[0])
                if index == 0:
                    if not _contains(found[1], container):
                        ops.append(
                            pointer.replace(pointer.path("spec", key, 0), container)
                        )
                    continue
                # Another webhook put a container in front of ours: move ours
                # back to the front so nothing starts before the first token.
                ops.append(pointer.remove(pointer.path("spec", key, index)))
            init_list = spec.get("initContainers")
            if isinstance(init_list, list) and (len(init_list) - len(init_removed)) > 0:
                ops.append(pointer.add(pointer.path("spec", key, 0), container))
            elif isinstance(init_list, list):
                ops.append(pointer.add(pointer.path("spec", key, "-"), container))
            else:
                ops.append(pointer.add(pointer.path("spec", key), [container]))
        elif found is None:
            ops += _append(pointer.path("spec", key), spec.get(key), [container])
        elif not _contains(found[1], container):
            ops.append(pointer.replace(pointer.path("spec", key, found[0]), container))
    return ops


def _volume_ops(
    spec: Mapping[str, Any], wanted_volumes: Sequence[dict[str, Any]], owned: set[str]
) -> list[Op]:
    volumes = spec.get("volumes")
    present = {
        name: (i, v)
        for i, v in enumerate(_as_list(volumes))
        if isinstance(name := _as_dict(v).get("name"), str)
    }
    wanted_names = {v["name"] for v in wanted_volumes}
    ops: list[Op] = []
    removals = sorted(
        (present[n][0] for n in owned if n in present and n not in wanted_names),
        reverse=True,
    )
    ops += [pointer.remove(pointer.path("spec", "volumes", i)) for i in removals]
    additions = []
    for volume in wanted_volumes:
        if volume["name"] not in present:
            additions.append(volume)
            continue
        index, current = present[volume["name"]]
        if not _contains(current, volume):
            index -= sum(1 for r in removals if r < index)
            ops.append(pointer.replace(pointer.path("spec", "volumes", index), volume))
    return ops + _append(pointer.path("spec", "volumes"), volumes, additions)


def _annotation_ops(metadata: Mapping[str, Any], selection: Selection) -> list[Op]:
    annotations = metadata.get("annotations")
    current = _as_dict(annotations)
    ops: list[Op] = []
    additions: dict[str, str] = {}
    for provider in Provider:
        key = f"{ANNOTATION_PREFIX}{provider.value}"
        chosen: Identity | None = selection.get(provider)
        where = pointer.path("metadata", "annotations", key)
        if chosen is None:
            if key in current:
                ops.append(pointer.remove(where))
        elif key not in current:
            additions[key] = chosen.name
        elif current[key] != chosen.name:
            ops.append(pointer.replace(where, chosen.name))
    if additions and not isinstance(annotations, dict):
        ops.append(pointer.add("/metadata/annotations", additions))
    else:
        ops += [
            pointer.add(pointer.path("metadata", "annotations", k), v)
            for k, v in additions.items()
        ]
    return ops


def mutate(
    pod: Mapping[str, Any],
    selection: Selection,
    *,
    namespace: str,
    project: str,
    settings: SidecarSettings,
) -> Mutation:
    """The patch that brings `pod` to carry exactly `selection`, and warnings."""
    result = Mutation()
    metadata = _as_dict(pod.get("metadata"))
    spec = _as_dict(pod.get("spec"))
    annotations = _as_dict(metadata.get("annotations"))
    existing = _find_existing(spec)
    volume = _pick_volume_name(spec, existing)
    session = session_name(namespace, metadata)
    wanted_env = desired_env(selection, session)
    skip = _skip_list(annotations)
    active = not selection.empty

    # Each user container: env and the read-only token mount.
    for where, container in _user_containers(spec):
        name = container.get("name")
        inject = active and not (isinstance(name, str) and name in skip)
        conflict = _mount_conflict(container, volume) if inject else None
        if conflict:
            result.warnings.append(
                f"container {name!r} already mounts {conflict}, where the token volume "
                "would go; it gets no workload identity credentials"
            )
            inject = False
        env = wanted_env if inject else {}
        result.patch += _container_env_ops(
            where, container, env, existing.recorded, result.warnings
        )
        result.patch += _container_mount_ops(where, container, volume, inject)

    # Pod-level items: volumes, the sidecar, the annotations.
    context = PodContext(
        project=project,
        session_name=session,
        aws=selection.get(Provider.AWS),
        gcp=selection.get(Provider.GCP),
    )
    desired: list[tuple[str, dict[str, Any]]] = []
    if active:
        init, ordinary = sidecar_containers(
            settings,
            context,
            token_volume=volume,
            restart_policy=str(spec.get("restartPolicy", "Always")),
        )
        if init is not None:
            desired.append(("initContainers", init))
        if ordinary is not None:
            desired.append(("containers", ordinary))
    owned = {volume, f"{volume}-key", f"{volume}-sa"} if existing.containers else set()
    result.patch += _volume_ops(
        spec, pod_volumes(volume, settings) if active else [], owned
    )
    result.patch += _sidecar_ops(spec, existing, desired)
    result.patch += _annotation_ops(metadata, selection)
    return result


__all__ = [
    "INIT_NAME",
    "MANAGED_VARIABLES",
    "SIDECAR_NAME",
    "Mutation",
    "SidecarMode",
    "desired_env",
    "mutate",
    "session_name",
]
