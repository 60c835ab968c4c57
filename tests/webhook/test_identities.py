"""Validation of WorkloadIdentity documents: every error names the field."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from webhook.identities import (
    IdentityError,
    Provider,
    parse_identities,
    parse_identity,
)
from webhook.status import validity

BASE: dict[str, Any] = {
    "apiVersion": "workloadidentity.dev/v1alpha1",
    "kind": "WorkloadIdentity",
    "metadata": {"name": "s3-reader"},
    "spec": {
        "provider": "aws",
        "aws": {"roleArn": "arn:aws:iam::111122223333:role/s3-reader"},
        "scope": {"projects": {"names": ["payments"]}},
    },
}


def doc(**changes: Any) -> dict[str, Any]:
    document = copy.deepcopy(BASE)
    for dotted, value in changes.items():
        *parents, last = dotted.split("__")
        target = document
        for key in parents:
            target = target.setdefault(key, {})
        if value is None:
            target.pop(last, None)
        else:
            target[last] = value
    return document


def test_defaults_follow_the_design() -> None:
    identity = parse_identity(BASE)
    assert identity.provider is Provider.AWS
    assert identity.scope is not None
    assert identity.scope.projects.restrict is True
    assert identity.scope.tags.restrict is False
    assert identity.expiration_seconds == 3600
    assert identity.audience == "sts.amazonaws.com"


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"spec__provider": "azure"}, "spec.provider"),
        ({"spec__aws": None}, "spec.aws"),
        ({"spec__aws": {"roleArn": "s3-reader"}}, "spec.aws.roleArn"),
        (
            {
                "spec__aws": {
                    "roleArn": "arn:aws:iam::111122223333:role/x",
                    "region": "mars",
                }
            },
            "spec.aws.region",
        ),
        ({"spec__gcp": {"projectNumber": "1"}}, "spec.gcp"),
        (
            {"spec__scope": {"projects": {"names": ["a", "a"]}}},
            "spec.scope.projects.names",
        ),
        (
            {"spec__scope": {"projects": {"restrict": "yes"}}},
            "spec.scope.projects.restrict",
        ),
        ({"spec__scope": {"tags": {"names": "web"}}}, "spec.scope.tags.names"),
        ({"spec__scope": {"projekts": {}}}, "spec.scope"),
        ({"spec__token": {"expirationSeconds": 5}}, "spec.token.expirationSeconds"),
        ({"spec__token": {"expirationSeconds": 86401}}, "spec.token.expirationSeconds"),
        ({"metadata": {"name": "Bad_Name"}}, "metadata.name"),
        ({"kind": "Pod"}, "kind"),
    ],
)
def test_an_invalid_document_is_rejected_with_the_field_named(
    changes: dict[str, Any], field: str
) -> None:
    result = parse_identities([doc(**changes)])
    assert result.identities == ()
    [error] = result.errors
    assert error.field_path == field
    assert field in str(error)


def test_gcp_requires_the_provider_id_and_never_builds_a_pool_audience() -> None:
    document = doc(
        spec__provider="gcp",
        spec__aws=None,
        spec__gcp={"projectNumber": "1", "poolId": "pool-a"},
    )
    [error] = parse_identities([document]).errors
    assert error.field_path == "spec.gcp.providerId"
    document["spec"]["gcp"]["providerId"] = "prov-a"
    identity = parse_identity(document)
    assert identity.audience.endswith("/workloadIdentityPools/pool-a/providers/prov-a")


def test_an_invalid_identity_never_hides_the_valid_ones() -> None:
    bad = doc(spec__provider="nope")
    bad["metadata"]["name"] = "broken"
    good = doc()
    duplicate = doc()
    result = parse_identities([bad, good, None, "text", duplicate])
    assert [i.name for i in result.identities] == ["s3-reader"]
    assert {e.document for e in result.errors} == {"broken", "#4", "s3-reader"}


def test_a_list_of_identities_is_accepted() -> None:
    other = doc()
    other["metadata"]["name"] = "another"
    result = parse_identities([{"kind": "List", "items": [doc(), other]}])
    assert [i.name for i in result.identities] == ["another", "s3-reader"]


def test_every_fault_of_a_document_is_reported_at_once() -> None:
    """One round of edits fixes a document: the error lists the faults of all
    its parts, not just the first one found."""
    document = doc()
    document["spec"]["aws"]["roleArn"] = "arn:aws:iam::42:role/short-account"
    document["spec"]["scope"]["projects"]["names"] = ["payments", "no spaces"]
    document["spec"]["token"] = {"expirationSeconds": 5}
    document["spec"]["description"] = ["not", "text"]
    with pytest.raises(IdentityError) as raised:
        parse_identity(document)
    error = raised.value
    fields = [fault.field_path for fault in (error, *error.others)]
    assert fields == [
        "spec.scope.projects.names[1]",
        "spec.aws.roleArn",
        "spec.token.expirationSeconds",
        "spec.description",
    ]
    text = str(error)
    assert text.startswith("WorkloadIdentity s3-reader: spec.scope.projects.names[1]: ")
    assert "; spec.aws.roleArn: " in text
    assert "; spec.token.expirationSeconds: 5 is out of range" in text


def test_the_valid_condition_names_every_fault() -> None:
    document = doc()
    document["spec"]["aws"]["roleArn"] = "not-an-arn"
    document["spec"]["token"] = {"expirationSeconds": "soon"}
    with pytest.raises(IdentityError) as raised:
        parse_identity(document)
    condition = validity(raised.value, 3)
    assert condition.status == "False"
    assert condition.message.startswith("spec.aws.roleArn: ")
    assert "; spec.token.expirationSeconds: must be an integer" in condition.message


def test_a_misspelt_field_is_refused_with_the_field_it_was_meant_to_be() -> None:
    """The API server drops fields its schema does not know; a file must not
    keep one either: a misspelt `audience` would fall back to the default."""
    document = doc(spec__aws__audiense="my-audience", spec__tokn={"x": 1})
    with pytest.raises(IdentityError) as raised:
        parse_identity(document)
    text = str(raised.value)
    assert "spec: unknown field(s) 'tokn' (did you mean 'token'?)" in text
    assert "spec.aws: unknown field(s) 'audiense' (did you mean 'audience'?)" in text


def test_a_bad_name_and_a_bad_mode_are_reported_with_the_rest() -> None:
    document = doc(
        metadata__name="Broken_One",
        spec__permissions={"mode": "magic"},
        spec__token={"expirationSeconds": 5},
    )
    with pytest.raises(IdentityError) as raised:
        parse_identity(document)
    error = raised.value
    assert [f.field_path for f in (error, *error.others)] == [
        "metadata.name",
        "spec.permissions.mode",
        "spec.token.expirationSeconds",
    ]
    assert "is 'magic': expected managed or existing" in str(error)
