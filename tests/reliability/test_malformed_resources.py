"""Malformed WorkloadIdentities and Namespaces: each one rejected with a
message that names its field, and never at the cost of the valid ones, both
when parsed from a file and when watched from the API server by the webhook
process."""

from __future__ import annotations

import base64
import copy
import json
import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.reliability.adversarial import ODD_STRINGS, paths
from tests.reliability.cluster_rig import (
    Cluster,
    LoopThread,
    start_cluster,
    start_cluster_webhook,
)
from tests.reliability.support import (
    Figures,
    Processes,
    budget,
    free_port,
    http_get,
    sample,
    scaled,
)
from tests.reliability.webhook_rig import (
    aws_identity,
    gcp_identity,
    pod,
    review,
)
from webhook.identities import IdentityError, parse_identities
from webhook.issuer import write_new_key
from webhook.tls import write_self_signed

FIELD = re.compile(
    r"^(kind|apiVersion|metadata\.name|\(document\)|spec(\.[A-Za-z]+(\[\d+\])?)*)$"
)
"""How an error names a field: a path into the document."""

VALID = [
    aws_identity("payments-s3", projects=["payments"]),
    gcp_identity("payments-bq", projects=["payments"], tags=["bq"]),
]
keys = st.one_of(
    st.text(max_size=8), st.sampled_from(ODD_STRINGS), st.integers(), st.booleans()
)
values = st.recursive(
    st.one_of(
        st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=20),
        st.sampled_from(ODD_STRINGS),
    ),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(keys, inner, max_size=3)
    ),
    max_leaves=8,
)  # fmt: skip
"""What YAML can hold: keys need not be strings."""


@st.composite
def malformed_identities(draw: st.DrawFn) -> dict[str, Any]:
    document: dict[str, Any] = copy.deepcopy(draw(st.sampled_from(VALID)))
    document["metadata"]["name"] = draw(st.sampled_from(["broken-a", "broken-b"]))
    for _ in range(draw(st.integers(1, 3))):
        place = draw(st.sampled_from(paths(document)[1:]))
        parent: Any = document
        for step in place[:-1]:
            parent = parent[step]
        if draw(st.booleans()) or not isinstance(parent, dict):
            parent[place[-1]] = draw(values)
        else:
            parent[draw(keys)] = draw(values)
    return document


IDENTITY_INPUTS = scaled(500, 20_000)


@pytest.mark.timeout(budget(120, 1800))
def test_malformed_identities_are_each_rejected_by_field_and_never_hide_valid_ones(
    figures: Figures,
) -> None:
    seen: Counter[str] = Counter()

    @settings(
        max_examples=IDENTITY_INPUTS,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(st.lists(malformed_identities(), min_size=1, max_size=3))
    def each_is_judged_alone(broken: list[dict[str, Any]]) -> None:
        result = parse_identities([VALID[0], *broken, VALID[1]])
        loaded = {identity.name for identity in result.identities}
        assert {"payments-s3", "payments-bq"} <= loaded
        assert len(result.identities) + len(result.errors) == len(broken) + 2
        for error in result.errors:
            assert isinstance(error, IdentityError)
            assert FIELD.fullmatch(error.field_path), error.field_path
            assert error.message and error.field_path in str(error)
            seen["rejected"] += 1
        seen["accepted"] += len(loaded) - 2

    each_is_judged_alone()
    figures.record(
        "malformed identities",
        inputs=IDENTITY_INPUTS,
        rejected_by_field=seen["rejected"],
        still_valid=seen["accepted"],
    )


def _broken(name: str, where: str, value: Any) -> dict[str, Any]:
    document = copy.deepcopy(VALID[0])
    document["metadata"]["name"] = name
    parent = document
    *steps, last = where.split(".")
    for step in steps:
        parent = parent.setdefault(step, {})
    parent[last] = value
    return document


WATCHED_BROKEN = [
    _broken("broken-provider", "spec.provider", ["aws"]),
    _broken("broken-aws", "spec.aws", "arn:aws:iam::111122223333:role/x"),
    _broken("broken-role", "spec.aws.roleArn", {"arn": 1}),
    _broken("broken-region", "spec.aws.region", "mars-1"),
    _broken("broken-scope", "spec.scope", [1, 2]),
    _broken("broken-projects", "spec.scope.projects", {"names": "payments"}),
    _broken("broken-names", "spec.scope.projects.names", [None, "payments"]),
    _broken("broken-restrict", "spec.scope.tags", {"restrict": "yes"}),
    _broken("broken-unknown", "spec.scope.tags", {"restrict": True, "nmaes": ["s3"]}),
    _broken("broken-token", "spec.token", {"expirationSeconds": "3600"}),
    _broken("broken-lifetime", "spec.token", {"expirationSeconds": 10**12}),
    _broken("broken-spec", "spec", "aws"),
    _broken("broken-unicode", "spec.aws.roleArn", "arn:aws:iam::111122223333:role/\u202e\ud800"),
    _broken("broken-huge", "spec.description", ["x" * 100_000]),
]  # fmt: skip


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    thread = LoopThread()
    try:
        yield start_cluster(thread, audience="https://127.0.0.1")
    finally:
        thread.stop()


def test_a_watched_cluster_full_of_malformed_identities_still_serves_the_valid_ones(
    cluster: Cluster, processes: Processes, tmp_path: Path, figures: Figures
) -> None:
    cluster.namespace("payments", "payments")
    cluster.namespace("unlabelled", "")
    for document in [VALID[0], *WATCHED_BROKEN, VALID[1]]:
        cluster.identity(json.loads(json.dumps(document)))
    cert, key = tmp_path / "tls.crt", tmp_path / "tls.key"
    write_self_signed(str(cert), str(key), hosts=["127.0.0.1"])
    signing = tmp_path / "signing.pem"
    write_new_key(str(signing))
    port = free_port()
    webhook = start_cluster_webhook(
        processes,
        tmp_path,
        cluster,
        issuer_url=f"https://127.0.0.1:{port}",
        keys=[signing],
        tls=(cert, key),
        port=port,
    )

    client = webhook.client()
    try:
        tagged = pod(annotations={"workloadidentity.dev/tags": "bq"})
        answer = client.post_json(
            "/mutate", json.dumps(review(tagged, uid="valid-ones")).encode()
        ).json()["response"]
    finally:
        client.close()
    assert answer["allowed"] is True and "patch" in answer
    patch = json.loads(base64.b64decode(answer["patch"]))
    annotations = {
        op["path"]: op["value"] for op in patch if op["path"].startswith("/metadata")
    }
    assert "payments-s3" in json.dumps(annotations)
    assert "payments-bq" in json.dumps(annotations)

    page = http_get(f"http://127.0.0.1:{webhook.metrics_port}/metrics")[1]
    assert sample(page, "workload_identity_identities_invalid") == len(WATCHED_BROKEN)
    log = webhook.process.log()
    for document in WATCHED_BROKEN:
        name = document["metadata"]["name"]
        line = next(
            (x for x in log.splitlines() if f"WorkloadIdentity {name}:" in x), ""
        )
        field = line.split(f"WorkloadIdentity {name}: ", 1)[-1].split(":", 1)[0]
        assert FIELD.fullmatch(field), (name, line)
    figures.record(
        "malformed identities",
        watched_malformed=len(WATCHED_BROKEN),
        watched_valid_still_served=2,
    )
