"""Properties that hold for every pod shape, checked over generated pods."""

from __future__ import annotations

import copy
from typing import Any

import jsonpatch
import kubernetes_validate
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.webhook.casefiles import TOKEN_DIR, Webhook, all_containers, review_for
from webhook.mutation import MANAGED_VARIABLES
from webhook.pointer import escape, path

IDENTITIES = [
    {
        "apiVersion": "workloadidentity.dev/v1alpha1",
        "kind": "WorkloadIdentity",
        "metadata": {"name": name},
        "spec": {"provider": provider, **body, "scope": scope},
    }
    for name, provider, body, scope in [
        ("aws-any", "aws", {"aws": {"roleArn": "arn:aws:iam::111122223333:role/any", "region": "eu-west-1"}}, {"projects": {"names": ["p"]}}),
        ("aws-batch", "aws", {"aws": {"roleArn": "arn:aws:iam::111122223333:role/batch"}}, {"projects": {"names": ["p"]}, "tags": {"restrict": True, "names": ["batch"]}}),
        ("gcp-web", "gcp", {"gcp": {"projectNumber": "1", "poolId": "pool-a", "providerId": "prov-a", "serviceAccountEmail": "web-sa@proj-1.iam.gserviceaccount.com", "projectId": "proj-1"}}, {"projects": {"names": ["p"]}, "tags": {"restrict": True, "names": ["web"]}}),
    ]
]  # fmt: skip
NAMESPACES = [
    {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": "ns", "labels": {"workloadidentity.dev/project": "p"}},
    }
]

names = st.from_regex(r"[a-z][a-z0-9]{0,6}", fullmatch=True)
env_names = st.one_of(
    st.sampled_from(sorted(MANAGED_VARIABLES)),
    st.from_regex(r"[A-Z][A-Z_]{0,8}", fullmatch=True),
)
env_entry = st.builds(
    lambda name, value, from_ref: (
        {"name": name, "valueFrom": {"configMapKeyRef": {"name": "cm", "key": "k"}}}
        if from_ref
        else {"name": name, "value": value}
    ),
    env_names,
    st.text(alphabet="abc/:-", max_size=12),
    st.booleans(),
)
mount_paths = st.one_of(
    st.just(TOKEN_DIR),
    st.just(TOKEN_DIR + "/inner"),
    st.from_regex(r"/[a-z]{1,6}(/[a-z]{1,4})?", fullmatch=True),
)


@st.composite
def containers(
    draw: st.DrawFn, volume_names: list[str], taken: set[str], *, init: bool
) -> dict[str, Any]:
    name = draw(names.filter(lambda n: n not in taken))
    taken.add(name)
    container: dict[str, Any] = {"name": name, "image": "registry.example.com/app:1"}
    env = draw(st.lists(env_entry, max_size=5, unique_by=lambda e: e["name"]))
    if env or draw(st.booleans()):
        container["env"] = env
    if volume_names and draw(st.booleans()):
        mounts = draw(
            st.lists(
                st.tuples(st.sampled_from(volume_names), mount_paths),
                max_size=3,
                unique_by=lambda m: m[1],
            )
        )
        container["volumeMounts"] = [{"name": v, "mountPath": p} for v, p in mounts]
    if init and draw(st.booleans()):
        container["restartPolicy"] = "Always"  # a native sidecar of the user's own
    return container


@st.composite
def pods(draw: st.DrawFn) -> dict[str, Any]:
    volume_names = draw(
        st.lists(
            st.one_of(names, st.just("workload-identity-token")),
            max_size=3,
            unique=True,
        )
    )
    taken: set[str] = set()
    spec: dict[str, Any] = {
        "containers": [
            draw(containers(volume_names, taken, init=False))
            for _ in range(draw(st.integers(1, 3)))
        ],
        "restartPolicy": draw(st.sampled_from(["Always", "Never", "OnFailure"])),
    }
    if draw(st.booleans()):
        spec["initContainers"] = [
            draw(containers(volume_names, taken, init=True))
            for _ in range(draw(st.integers(0, 2)))
        ]
    if volume_names:
        spec["volumes"] = [{"name": v, "emptyDir": {}} for v in volume_names]
    if draw(st.booleans()):
        spec["ephemeralContainers"] = [{"name": "debug", "image": "busybox"}]
    annotations: dict[str, str] = {}
    if draw(st.booleans()):
        annotations["workloadidentity.dev/tags"] = ",".join(
            draw(st.lists(st.sampled_from(["batch", "web", " ", "", "x"]), max_size=3))
        )
    if draw(st.booleans()):
        annotations["workloadidentity.dev/skip-containers"] = ",".join(
            c["name"] for c in spec["containers"][:1]
        )
    if draw(st.booleans()):
        annotations["example.com/odd~key/with-slash"] = "kept"
    metadata: dict[str, Any] = {"generateName": f"{draw(names)}-", "namespace": "ns"}
    if annotations or draw(st.booleans()):
        metadata["annotations"] = annotations
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec}


def user_view(pod: dict[str, Any]) -> dict[str, Any]:
    """Everything in a pod that belongs to the user, webhook items removed."""
    view = copy.deepcopy(pod)
    spec = view["spec"]
    owned_volumes = {
        v["name"]
        for v in spec.get("volumes", [])
        if v["name"].startswith("workload-identity-token")
        and (
            "projected" in v
            or "secret" in v
            or (v.get("emptyDir") or {}).get("medium") == "Memory"
        )
    }
    for key in ("initContainers", "containers"):
        kept = []
        for c in spec.get(key, []):
            if any(e["name"] == "WI_TOKEN_DIR" for e in c.get("env") or []):
                continue
            c["env"] = [
                e
                for e in c.get("env") or []
                if e.get("value") not in _webhook_values(pod) or "valueFrom" in e
            ]
            c["volumeMounts"] = [
                m for m in c.get("volumeMounts") or [] if m["name"] not in owned_volumes
            ]
            kept.append(c)
        spec[key] = kept
    spec["volumes"] = [
        v for v in spec.get("volumes", []) if v["name"] not in owned_volumes
    ]
    annotations = view["metadata"].get("annotations") or {}
    for key in ("workloadidentity.dev/aws", "workloadidentity.dev/gcp"):
        annotations.pop(key, None)
    view["metadata"]["annotations"] = annotations
    return view


def _webhook_values(pod: dict[str, Any]) -> set[str]:
    values = {f"{TOKEN_DIR}/aws-token", f"{TOKEN_DIR}/gcp-credentials.json", "regional"}
    for c in all_containers(pod):
        if any(e["name"] == "WI_TOKEN_DIR" for e in c.get("env") or []):
            values |= {
                e["value"]
                for e in c["env"]
                if e["name"]
                in (
                    "WI_AWS_ROLE_ARN",
                    "WI_AWS_SESSION_NAME",
                    "WI_AWS_REGION",
                    "WI_GCP_PROJECT_ID",
                )
                and "value" in e
            }
    return values


def normalise(pod: dict[str, Any]) -> dict[str, Any]:
    spec = pod["spec"]
    for key in ("initContainers", "containers"):
        for c in spec.get(key, []):
            c.setdefault("env", [])
            c.setdefault("volumeMounts", [])
    spec.setdefault("volumes", [])
    spec.setdefault("initContainers", [])
    pod["metadata"].setdefault("annotations", {})
    return pod


WEBHOOK = Webhook(IDENTITIES, NAMESPACES)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pods())
def test_every_generated_pod_gets_a_clean_valid_idempotent_patch(
    pod: dict[str, Any],
) -> None:
    original = copy.deepcopy(pod)
    admitted = WEBHOOK.admit(review_for(pod))
    assert admitted.response["allowed"] is True
    patched = admitted.pod  # jsonpatch applied every op strictly
    assert pod == original, "the request object must not be modified in place"

    kubernetes_validate.validate(patched, "1.30", strict=True)

    for c in all_containers(patched):
        names = [e["name"] for e in c.get("env") or []]
        assert len(names) == len(set(names)), f"{c['name']} has duplicate env {names}"
        mounts = [m["mountPath"].rstrip("/") for m in c.get("volumeMounts") or []]
        assert mounts.count(TOKEN_DIR) <= 1
        assert all("subPath" not in m for m in c.get("volumeMounts") or [])
    assert patched["spec"].get("ephemeralContainers") == original["spec"].get(
        "ephemeralContainers"
    )
    assert normalise(user_view(patched)) == normalise(user_view(original))

    again = WEBHOOK.readmit(admitted, uid="second")
    assert again.patch == []


@settings(max_examples=100, deadline=None)
@given(pods(), st.sampled_from(["batch", "web", "", "batch,web"]))
def test_changing_tags_between_invocations_converges_to_a_fresh_admission(
    pod: dict[str, Any], tags: str
) -> None:
    first = WEBHOOK.admit(review_for(pod))
    changed = copy.deepcopy(first.pod)
    changed["metadata"].setdefault("annotations", {})["workloadidentity.dev/tags"] = (
        tags
    )
    fresh_pod = copy.deepcopy(pod)
    fresh_pod["metadata"].setdefault("annotations", {})["workloadidentity.dev/tags"] = (
        tags
    )
    second = WEBHOOK.admit(review_for(changed, uid="second"))
    fresh = WEBHOOK.admit(review_for(fresh_pod, uid="fresh"))
    assert second.pod["metadata"]["annotations"] == fresh.pod["metadata"]["annotations"]
    for a, b in zip(all_containers(second.pod), all_containers(fresh.pod), strict=True):
        assert sorted(e["name"] for e in a.get("env") or []) == sorted(
            e["name"] for e in b.get("env") or []
        )
    assert WEBHOOK.readmit(second, uid="third").patch == []


def test_json_pointer_escaping_handles_tilde_and_slash() -> None:
    assert escape("a/b~c") == "a~1b~0c"
    assert (
        path("metadata", "annotations", "workloadidentity.dev/aws")
        == "/metadata/annotations/workloadidentity.dev~1aws"
    )
    document = {"metadata": {"annotations": {"x~/y": "1"}}}
    assert jsonpatch.apply_patch(
        document,
        [
            {
                "op": "replace",
                "path": path("metadata", "annotations", "x~/y"),
                "value": "2",
            }
        ],
    ) == {"metadata": {"annotations": {"x~/y": "2"}}}


@given(st.text(max_size=80), st.text(max_size=300), st.booleans())
def test_session_names_are_always_valid_for_sts(
    namespace: str, name: str, generated: bool
) -> None:
    import re

    from webhook.mutation import session_name

    metadata = {"generateName": name} if generated else {"name": name}
    value = session_name(namespace, metadata)
    assert re.fullmatch(r"[\w+=,.@-]{2,64}", value, flags=re.ASCII), value
