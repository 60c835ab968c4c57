"""The pure parts of install/verify/status: trust analysis, plans, error
translation, the status difference and the state file."""

from __future__ import annotations

import argparse
import json
import stat
from pathlib import Path
from typing import Any

import pytest

from tests.webhook.cloud.support import aws_document, gcp_document, s3_policy
from webhook.aws_trust import trust_policy
from webhook.cli_cloud import issuer_is_private
from webhook.cloud.aws_plan import (
    AwsObserved,
    OidcProvider,
    Role,
    analyse_trust,
    plan_aws,
    role_path_and_name,
    same_policy,
)
from webhook.cloud.errors import ErrorKind, explain_aws, explain_gcp
from webhook.cloud.gcp_plan import (
    GcpObserved,
    IamPolicy,
    Pool,
    PoolProvider,
    ServiceAccount,
    custom_role_id,
    plan_gcp,
)
from webhook.cloud.plan import Check, ReadDenied, render_plan
from webhook.cloud.report import InstallState, identity_status
from webhook.cloud.spec import install_snapshot, parse_permissions, snapshot_hash
from webhook.cloud.state import (
    InstallRecord,
    LocalStateFile,
    StateFileError,
)
from webhook.identities import IdentityError, parse_identity

ISSUER = "https://oidc.example.com/c1"
PROVIDER = "arn:aws:iam::123456789012:oidc-provider/oidc.example.com/c1"


def aws(name: str = "reports", **permissions: Any) -> Any:
    return parse_identity(aws_document(name, permissions=permissions or None))


def test_a_narrowed_trust_policy_still_admits_the_identity() -> None:
    policy = trust_policy(aws(), ISSUER)
    policy["Statement"][0]["Condition"]["StringLike"] = {
        "oidc.example.com/c1:sub": "reports:payments:payments-ns:*"
    }
    findings = analyse_trust(policy, aws(), ISSUER)
    assert [f.check for f in findings] == [Check.OK]


@pytest.mark.parametrize(
    ("pattern", "problem"),
    [
        ("*", "sub '*' admits tokens of other identities"),
        ("reports*", "sub 'reports*' admits tokens of other identities"),
        ("billing:*", "sub 'billing:*' admits tokens of other identities"),
    ],
)
def test_a_trust_policy_open_to_other_identities_is_wrong(
    pattern: str, problem: str
) -> None:
    policy = trust_policy(aws(), ISSUER)
    policy["Statement"][0]["Condition"]["StringLike"] = {
        "oidc.example.com/c1:sub": pattern
    }
    findings = analyse_trust(policy, aws(), ISSUER)
    assert any(f.check is Check.WRONG and problem in f.message for f in findings)


def test_a_trust_policy_without_a_sub_condition_admits_everyone() -> None:
    policy = trust_policy(aws(), ISSUER)
    del policy["Statement"][0]["Condition"]["StringLike"]
    messages = [f.message for f in analyse_trust(policy, aws(), ISSUER)]
    assert (
        "a statement has no condition on sub, so it admits every identity" in messages
    )


def test_a_trust_policy_for_another_issuer_does_not_count() -> None:
    policy = trust_policy(aws(), "https://elsewhere.example.com")
    (finding,) = analyse_trust(policy, aws(), ISSUER)
    assert finding.check is Check.WRONG
    assert f"no statement lets {PROVIDER}" in finding.message


def test_policies_equal_up_to_one_item_lists_and_order() -> None:
    left = {"Statement": [{"Action": ["s3:GetObject"], "Resource": ["a", "b"]}]}
    right = {"Statement": {"Action": "s3:GetObject", "Resource": ["b", "a"]}}
    assert same_policy(left, right)
    assert not same_policy(left, {"Statement": [{"Action": "s3:PutObject"}]})


def test_role_paths_come_from_the_arn() -> None:
    assert role_path_and_name("arn:aws:iam::1:role/team/apps/reports") == (
        "/team/apps/",
        "reports",
    )
    assert role_path_and_name("arn:aws:iam::1:role/reports") == ("/", "reports")


def test_a_provider_missing_the_audience_gets_it_added() -> None:
    identity = aws(mode="managed", policyDocument=s3_policy())
    observed = AwsObserved(
        account="123456789012",
        provider=OidcProvider(PROVIDER, "oidc.example.com/c1", ("other",)),
        role=Role("arn", trust_policy(identity, ISSUER)),
        policy=s3_policy(),
    )
    plan = plan_aws(identity, ISSUER, observed)
    assert [c.action for c in plan.calls] == ["AddClientIDToOpenIDConnectProvider"]
    assert plan.calls[0].params == {
        "OpenIDConnectProviderArn": PROVIDER,
        "ClientID": "sts.amazonaws.com",
    }


def test_a_changed_trust_is_rewritten_and_a_removed_document_deleted() -> None:
    identity = aws(mode="managed")
    observed = AwsObserved(
        account="123456789012",
        provider=OidcProvider(PROVIDER, "oidc.example.com/c1", ("sts.amazonaws.com",)),
        role=Role("arn", {"Statement": []}),
        policy=s3_policy(),
    )
    plan = plan_aws(identity, ISSUER, observed)
    assert [c.action for c in plan.calls] == [
        "UpdateAssumeRolePolicy",
        "DeleteRolePolicy",
    ]


def test_an_unreadable_role_blocks_install_and_names_the_permission() -> None:
    identity = aws(mode="managed")
    observed = AwsObserved(
        account="123456789012",
        provider=None,
        role=ReadDenied("iam:GetRole"),
    )
    plan = plan_aws(identity, ISSUER, observed)
    assert [f.check for f in plan.blockers] == [Check.UNKNOWN]
    assert "missing permission iam:GetRole" in plan.blockers[0].message
    assert "cannot install" in render_plan(plan, dry_run=False)[0]


def gcp_identity(**permissions: Any) -> Any:
    return parse_identity(gcp_document("reports", permissions=permissions or None))


def test_a_provider_with_another_issuer_and_mapping_is_patched_with_an_update_mask() -> (
    None
):
    identity = gcp_identity()
    name = "projects/123456789012/locations/global/workloadIdentityPools/cluster-pool"
    observed = GcpObserved(
        pool=Pool(name),
        provider=PoolProvider(
            f"{name}/providers/cluster-oidc",
            issuer_uri="https://old.example.com",
            attribute_mapping={"google.subject": "assertion.sub"},
            allowed_audiences=("https://example.com/aud",),
        ),
        service_account=ServiceAccount("reports@proj-one.iam.gserviceaccount.com"),
        sa_policy=IamPolicy(
            bindings=(
                {
                    "role": "roles/iam.workloadIdentityUser",
                    "members": [
                        f"principalSet://iam.googleapis.com/{name}/attribute.identity/reports"
                    ],
                },
            )
        ),
    )
    (call,) = plan_gcp(identity, ISSUER, observed).calls
    assert call.action == (
        f"PATCH v1/{name}/providers/cluster-oidc"
        "?updateMask=oidc.issuerUri,oidc.allowedAudiences,attributeMapping"
    )
    assert call.params["oidc"]["allowedAudiences"] == [
        "https://example.com/aud",
        f"//iam.googleapis.com/{name}/providers/cluster-oidc",
    ]


def test_a_disabled_pool_is_reported_not_enabled() -> None:
    identity = gcp_identity()
    plan = plan_gcp(identity, ISSUER, GcpObserved(pool=Pool("p", disabled=True)))
    assert not plan.calls
    assert "is disabled, so no token is exchanged" in plan.blockers[0].message


def test_custom_role_ids_keep_to_googles_alphabet_and_length() -> None:
    assert custom_role_id("s3-reader.v2") == "workloadIdentity_s3_reader.v2"
    long = custom_role_id("a" * 200)
    assert len(long) == 64 and long != custom_role_id("a" * 199)


def test_managed_gcp_permissions_need_a_project() -> None:
    document = gcp_document(
        "reports", account=None, permissions={"permissions": ["storage.objects.get"]}
    )
    del document["spec"]["gcp"]["projectId"]
    plan = plan_gcp(parse_identity(document), ISSUER, GcpObserved())
    assert any("set spec.gcp.projectId" in f.hint for f in plan.blockers)


@pytest.mark.parametrize(
    ("permissions", "field"),
    [
        ({"mode": "sometimes"}, "spec.permissions.mode"),
        (
            {"policyDocument": {"Statement": []}},
            "spec.permissions.policyDocument.Statement",
        ),
        ({"policyDocument": "allow all"}, "spec.permissions.policyDocument"),
        ({"extra": 1}, "spec.permissions"),
    ],
)
def test_invalid_aws_permissions_name_the_field(
    permissions: dict[str, Any], field: str
) -> None:
    with pytest.raises(IdentityError) as raised:
        parse_permissions(aws(**permissions))
    assert raised.value.field_path == field


def test_invalid_gcp_permissions_name_the_entry() -> None:
    with pytest.raises(IdentityError) as raised:
        parse_permissions(gcp_identity(permissions=["storage.objects.get", "get"]))
    assert raised.value.field_path == "spec.permissions.permissions[1]"


def test_without_a_permissions_block_install_manages_nothing() -> None:
    assert parse_permissions(aws()).mode.value == "existing"
    assert parse_permissions(aws(policyDocument=s3_policy())).mode.value == "managed"


@pytest.mark.parametrize(
    ("code", "message", "kind", "says"),
    [
        (
            "AccessDenied",
            "User: arn:aws:iam::1:user/ci is not authorized to perform: iam:CreateRole on resource",
            ErrorKind.PERMISSION,
            "missing permission iam:CreateRole",
        ),
        (
            "LimitExceeded",
            "Cannot exceed quota for RolesPerAccount: 1000",
            ErrorKind.QUOTA,
            "quota",
        ),
        (
            "InvalidInput",
            "Could not retrieve the thumbprint of the certificate",
            ErrorKind.ISSUER,
            "serve them on a public HTTPS URL",
        ),
        (
            "InvalidClientTokenId",
            "The security token is invalid",
            ErrorKind.CREDENTIALS,
            "AWS_PROFILE",
        ),
    ],
)
def test_aws_errors_say_what_to_do(
    code: str, message: str, kind: ErrorKind, says: str
) -> None:
    error = explain_aws("CreateRole", code, message)
    assert error.kind is kind
    assert says in str(error)


@pytest.mark.parametrize(
    ("status", "error", "kind", "says"),
    [
        (
            403,
            {
                "status": "PERMISSION_DENIED",
                "message": "Permission 'iam.roles.create' denied",
            },
            ErrorKind.PERMISSION,
            "missing permission iam.roles.create",
        ),
        (
            429,
            {"status": "RESOURCE_EXHAUSTED", "message": "Quota exceeded"},
            ErrorKind.QUOTA,
            "quota",
        ),
        (
            409,
            {"status": "ALREADY_EXISTS", "message": "Role x was deleted"},
            ErrorKind.RESERVED,
            "stays reserved",
        ),
        (409, {"status": "ABORTED", "message": "etag"}, ErrorKind.CONFLICT, "again"),
        (
            400,
            {"status": "INVALID_ARGUMENT", "message": "Invalid JWKS in oidc.jwksJson"},
            ErrorKind.ISSUER,
            "--jwks-file",
        ),
        (
            403,
            {
                "status": "PERMISSION_DENIED",
                "message": "IAM API has not been used",
                "details": [{"reason": "SERVICE_DISABLED"}],
            },
            ErrorKind.PERMISSION,
            "gcloud services enable",
        ),
    ],
)
def test_google_errors_say_what_to_do(
    status: int, error: dict[str, Any], kind: ErrorKind, says: str
) -> None:
    explained = explain_gcp("POST v1/x", status, {"error": error})
    assert explained.kind is kind
    assert says in str(explained)


def test_private_issuers_are_recognised() -> None:
    for url in ("https://127.0.0.1:8443", "https://10.0.0.5", "https://issuer.ns.svc"):
        assert issuer_is_private(url), url
    assert not issuer_is_private("https://oidc.example.com/clusters/one")


def test_status_is_failed_only_for_the_spec_that_failed() -> None:
    identity = aws(policyDocument=s3_policy())
    snapshot = install_snapshot(identity, ISSUER)
    digest = snapshot_hash(snapshot)
    record = InstallRecord("reports", "aws").failed(digest, 1, "missing permission")
    assert identity_status("reports", "aws", snapshot, digest, "", record).state is (
        InstallState.FAILED
    )
    other = install_snapshot(aws(policyDocument=s3_policy("s3:PutObject")), ISSUER)
    assert (
        identity_status("reports", "aws", other, snapshot_hash(other), "", record).state
        is InstallState.PENDING
    )


def test_the_snapshot_ignores_scope_and_lifetime_but_not_the_issuer() -> None:
    document = aws_document("reports", permissions={"policyDocument": s3_policy()})
    base = snapshot_hash(install_snapshot(parse_identity(document), ISSUER))
    document["spec"]["scope"] = {"projects": {"names": ["other"]}}
    document["spec"]["token"] = {"expirationSeconds": 600}
    assert snapshot_hash(install_snapshot(parse_identity(document), ISSUER)) == base
    moved = install_snapshot(parse_identity(document), "https://new.example.com")
    assert snapshot_hash(moved) != base


def test_a_record_from_a_cluster_status_is_compared_on_the_permissions_hash() -> None:
    from webhook.status import permissions_hash

    identity = aws(policyDocument=s3_policy())
    snapshot = install_snapshot(identity, ISSUER)
    digest = snapshot_hash(snapshot)
    current = permissions_hash(identity.permissions)
    record = InstallRecord(
        "reports", "aws", installed_permissions_hash=current, installed_generation=3
    )
    installed = identity_status("reports", "aws", snapshot, digest, current, record)
    assert installed.state is InstallState.INSTALLED
    assert installed.summary == "generation 3 installed"
    pending = identity_status("reports", "aws", snapshot, digest, "sha256:new", record)
    assert pending.state is InstallState.PENDING
    assert pending.difference == ("spec.permissions changed",)


def test_the_state_file_keeps_other_identities_and_is_private(tmp_path: Path) -> None:
    store = LocalStateFile(str(tmp_path / "state" / "install.json"))
    store.save(InstallRecord("a", "aws", installed_hash="sha256:1"))
    store.save(InstallRecord("b", "gcp", installed_hash="sha256:2"))
    loaded = store.load()
    assert {name: r.installed_hash for name, r in loaded.items()} == {
        "a": "sha256:1",
        "b": "sha256:2",
    }
    assert stat.S_IMODE((tmp_path / "state" / "install.json").stat().st_mode) == 0o600


def test_a_foreign_state_file_is_refused_with_what_to_do(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    path.write_text(json.dumps({"kind": "Something"}))
    with pytest.raises(StateFileError, match="pass another --state-file"):
        LocalStateFile(str(path)).load()


def test_a_private_issuer_is_warned_about_only_for_the_real_clouds() -> None:
    from webhook.cli_cloud import issuer_warnings
    from webhook.cloud.spec import InstallOptions

    identities = [aws(), gcp_identity()]
    real = argparse.Namespace(
        aws_endpoint_url=None, gcp_iam_url="https://iam.googleapis.com"
    )
    private = InstallOptions(issuer_url="https://10.0.0.5:8443")
    warnings = issuer_warnings(real, private, identities)
    assert len(warnings) == 2
    assert "AWS cannot reach the issuer https://10.0.0.5:8443" in warnings[0]
    assert "pass --jwks-file" in warnings[1]
    inline = InstallOptions(issuer_url="https://10.0.0.5:8443", jwks_json='{"keys":[]}')
    assert len(issuer_warnings(real, inline, identities)) == 1
    local = argparse.Namespace(
        aws_endpoint_url="http://127.0.0.1:5000", gcp_iam_url="http://127.0.0.1:5001"
    )
    assert issuer_warnings(local, private, identities) == []
    public = InstallOptions(issuer_url="https://oidc.example.com")
    assert issuer_warnings(real, public, identities) == []


def test_creating_with_tags_needs_the_tagging_permission_too() -> None:
    identity = aws(mode="managed")
    plan = plan_aws(identity, ISSUER, AwsObserved(account="123456789012"))
    assert [c.permission for c in plan.calls] == [
        "iam:CreateOpenIDConnectProvider, iam:TagOpenIDConnectProvider",
        "iam:CreateRole, iam:TagRole",
    ]
