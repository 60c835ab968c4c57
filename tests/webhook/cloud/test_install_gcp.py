"""`install`, `verify` and `status` for GCP, against the local fakes of the IAM,
Resource Manager and STS REST APIs; google-auth's own credentials make the
token exchange afterwards."""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import google.auth.exceptions
import google.auth.identity_pool
import pytest
import requests
from google.auth.transport.requests import AuthorizedSession, Request

from oidc_tokens.gcp import credential_config
from tests.webhook.cloud.support import (
    LocalIssuer,
    LoopThread,
    gcp_document,
    write_identities,
)
from webhook.cli import main
from webhook.cloud.gcp import CLOUD_PLATFORM_SCOPE, GcpCloud
from webhook.cloud.install import Clouds, Installer, Outcome, verify
from webhook.cloud.plan import Call, Check
from webhook.cloud.spec import InstallOptions, ProviderSetup
from webhook.cloud.state import LocalStateFile
from webhook.demo.fake_gcp import FakeGcp, create_app
from webhook.demo.fake_gcp_iam import FakeIam, admin_credentials
from webhook.identities import Identity, Provider, parse_identity

POOL = "projects/123456789012/locations/global/workloadIdentityPools/cluster-pool"
PROVIDER = f"{POOL}/providers/cluster-oidc"
EMAIL = "reports@proj-one.iam.gserviceaccount.com"
MEMBER = f"principalSet://iam.googleapis.com/{POOL}/attribute.identity/reports"
ROLE = "projects/proj-one/roles/workloadIdentity_reports"


@dataclass(slots=True)
class Gcp:
    fake: FakeGcp
    url: str
    issuer: LocalIssuer
    state: Path

    @property
    def iam(self) -> FakeIam:
        return self.fake.iam

    def cloud(self, kind: type[GcpCloud] = GcpCloud) -> GcpCloud:
        session = AuthorizedSession(admin_credentials(self.iam, self.url))
        return kind(
            session,
            iam_url=self.url,
            resource_manager_url=f"{self.url}/crm",
            poll_seconds=0.01,
        )

    def options(self, **overrides: Any) -> InstallOptions:
        return InstallOptions(issuer_url=self.issuer.url, **overrides)

    def install(
        self, *documents: dict[str, Any], dry_run: bool = False, **options: Any
    ) -> tuple[list[Outcome], str]:
        return self.install_with(self.cloud(), *documents, dry_run=dry_run, **options)

    def install_with(
        self,
        cloud: GcpCloud,
        *documents: dict[str, Any],
        dry_run: bool = False,
        **options: Any,
    ) -> tuple[list[Outcome], str]:
        out = io.StringIO()
        installer = Installer(
            self.options(**options),
            Clouds({Provider.GCP: lambda: cloud}),
            None if dry_run else LocalStateFile(str(self.state)),
            out,
            dry_run=dry_run,
        )
        identities = [parse_identity(d) for d in documents]
        return installer.run(identities), out.getvalue()

    def verify(
        self, *documents: dict[str, Any], **options: Any
    ) -> tuple[Check | None, str]:
        out = io.StringIO()
        cloud = self.cloud()
        worst = verify(
            [parse_identity(d) for d in documents],
            self.options(**options),
            Clouds({Provider.GCP: lambda: cloud}),
            out,
        )
        return worst, out.getvalue()

    def policy(self, resource: str) -> dict[str, list[str]]:
        policy = self.iam.policies.get(resource, {})
        return {b["role"]: b["members"] for b in policy.get("bindings", [])}


@pytest.fixture
def gcp(tmp_path: Path, loop_thread: LoopThread, local_issuer: LocalIssuer) -> Gcp:
    fake = FakeGcp(
        ca_file=local_issuer.ca_file, iam=FakeIam(projects={"proj-one": "123456789012"})
    )
    url = loop_thread.serve(create_app(fake))
    return Gcp(fake, url, local_issuer, tmp_path / "state.json")


def managed(name: str = "reports", *permissions: str) -> dict[str, Any]:
    return gcp_document(
        name,
        permissions={
            "mode": "managed",
            "permissions": list(permissions or ("storage.objects.get",)),
        },
    )


def exchange(gcp: Gcp, tmp_path: Path, identity: Identity, token: str) -> str:
    """What a pod's google-auth does with the injected credential file."""
    assert identity.gcp is not None
    token_file = tmp_path / f"token-{identity.name}"
    token_file.write_text(token)
    config = credential_config(
        audience=identity.gcp.audience,
        token_file=str(token_file),
        service_account_email=identity.gcp.service_account_email,
        sts_url=f"{gcp.url}/v1/token",
        iam_credentials_url=gcp.url,
    )
    credentials = google.auth.identity_pool.Credentials.from_info(
        config, scopes=[CLOUD_PLATFORM_SCOPE]
    )
    credentials.refresh(Request())
    return str(credentials.token)


def test_install_creates_pool_provider_account_role_and_bindings_then_changes_nothing(
    gcp: Gcp,
) -> None:
    (outcome,), out = gcp.install(managed())
    assert outcome.ok, out
    assert [call.short() for call in outcome.calls] == [
        "create workloadIdentityPools",
        "create providers",
        "create serviceAccounts",
        "create roles",
        "setIamPolicy projects",
        "setIamPolicy serviceAccounts",  # once the account exists, with its etag
    ]
    provider = gcp.iam.providers[PROVIDER]
    assert provider["oidc"] == {"issuerUri": gcp.issuer.url}
    assert provider["attributeMapping"] == {
        "google.subject": "assertion.sub",
        "attribute.identity": "assertion['workloadidentity.dev/identity']",
        "attribute.project": "assertion['workloadidentity.dev/project']",
        "attribute.namespace": "assertion['kubernetes.io/namespace']",
    }
    assert gcp.policy(f"projects/proj-one/serviceAccounts/{EMAIL}") == {
        "roles/iam.workloadIdentityUser": [MEMBER]
    }
    assert gcp.iam.roles[ROLE]["includedPermissions"] == ["storage.objects.get"]
    assert gcp.policy("projects/proj-one") == {ROLE: [f"serviceAccount:{EMAIL}"]}
    assert any("/operations/" in r for r in gcp.iam.requests), "operations were polled"

    (again,), out = gcp.install(managed())
    assert again.ok and not again.changed, out
    assert "reports (gcp): up to date, nothing to change" in out


def test_after_install_google_auth_exchanges_the_token_and_impersonates(
    gcp: Gcp, tmp_path: Path
) -> None:
    gcp.install(managed())
    identity = parse_identity(managed())
    token = gcp.issuer.token("reports", audience=identity.audience)
    assert exchange(gcp, tmp_path, identity, token).startswith("sa-")
    assert gcp.fake.impersonations == [EMAIL]


def test_a_token_of_another_identity_cannot_impersonate_the_account(
    gcp: Gcp, tmp_path: Path
) -> None:
    gcp.install(managed(), managed("reports-admin"))
    identity = parse_identity(managed())
    stranger = gcp.issuer.token("reports-admin", audience=identity.audience)
    with pytest.raises(google.auth.exceptions.GoogleAuthError, match="getAccessToken"):
        exchange(gcp, tmp_path, identity, stranger)
    assert gcp.fake.exchanges, "the STS exchange itself succeeded"


def test_a_token_for_another_audience_is_refused_by_sts(
    gcp: Gcp, tmp_path: Path
) -> None:
    gcp.install(managed())
    identity = parse_identity(managed())
    token = gcp.issuer.token("reports", audience="sts.amazonaws.com")
    with pytest.raises(google.auth.exceptions.GoogleAuthError, match="invalid_grant"):
        exchange(gcp, tmp_path, identity, token)
    assert not gcp.fake.exchanges


def test_an_inline_jwks_is_uploaded_and_used_without_fetching_the_issuer(
    gcp: Gcp, tmp_path: Path
) -> None:
    jwks = gcp.issuer.jwks_file.read_text()
    (outcome,), out = gcp.install(managed(), jwks_json=jwks)
    assert outcome.ok, out
    assert json.loads(gcp.iam.providers[PROVIDER]["oidc"]["jwksJson"]) == json.loads(
        jwks
    )
    gcp.fake.ca_file = "/nonexistent/ca.pem"  # a fetch of the issuer would fail now
    identity = parse_identity(managed())
    token = gcp.issuer.token("reports", audience=identity.audience)
    assert exchange(gcp, tmp_path, identity, token).startswith("sa-")

    (again,), out = gcp.install(managed())  # without the JWKS: it is removed
    assert [c.short() for c in again.calls] == ["update providers"], out
    assert "oidc.jwksJson" in out
    assert "jwksJson" not in gcp.iam.providers[PROVIDER]["oidc"]


def test_a_permission_change_is_pending_then_installed_with_the_role_etag(
    gcp: Gcp,
) -> None:
    gcp.install(managed())
    etag = gcp.iam.roles[ROLE]["etag"]
    options = gcp.options()
    records = LocalStateFile(str(gcp.state)).load()
    from webhook.cloud.install import statuses

    changed = managed("reports", "storage.objects.get", "storage.objects.create")
    (pending,) = statuses([parse_identity(changed)], options, records)
    assert pending.state.value == "pending"
    assert pending.difference == (
        "permissions.permissions:",
        "  + storage.objects.create",
    )
    assert gcp.iam.roles[ROLE]["etag"] == etag, "nothing changes before install"

    (outcome,), out = gcp.install(changed)
    assert [c.short() for c in outcome.calls] == ["update roles"], out
    assert f'"etag": "{etag}"' in out
    assert gcp.iam.roles[ROLE]["includedPermissions"] == [
        "storage.objects.create",
        "storage.objects.get",
    ]
    records = LocalStateFile(str(gcp.state)).load()
    (installed,) = statuses([parse_identity(changed)], options, records)
    assert installed.state.value == "installed"


class RacingCloud(GcpCloud):
    """Someone else changes the account's policy just before our write."""

    iam: FakeIam
    raced = False

    def apply(self, identity: Identity, call: Call) -> None:
        if call.action.endswith(f"{EMAIL}:setIamPolicy") and not self.raced:
            self.raced = True
            name = f"projects/proj-one/serviceAccounts/{EMAIL}"
            self.iam.policies[name] = {
                "version": 1,
                "etag": "changed-elsewhere",
                "bindings": [
                    {
                        "role": "roles/iam.serviceAccountUser",
                        "members": ["user:ops@example.com"],
                    }
                ],
            }
        super().apply(identity, call)


def test_a_policy_changed_meanwhile_is_read_again_and_nothing_is_lost(
    gcp: Gcp,
) -> None:
    racing = gcp.cloud(RacingCloud)
    assert isinstance(racing, RacingCloud)
    racing.iam = gcp.iam
    (outcome,), out = gcp.install_with(racing, managed())
    assert outcome.ok, out
    assert "changed meanwhile" in out and "ABORTED" in out
    assert gcp.policy(f"projects/proj-one/serviceAccounts/{EMAIL}") == {
        "roles/iam.serviceAccountUser": ["user:ops@example.com"],
        "roles/iam.workloadIdentityUser": [MEMBER],
    }


def test_managed_binding_drops_other_identities_of_the_pool_but_keeps_the_rest(
    gcp: Gcp,
) -> None:
    gcp.install(managed())
    name = f"projects/proj-one/serviceAccounts/{EMAIL}"
    broad = f"principalSet://iam.googleapis.com/{POOL}/*"
    gcp.iam.policies[name]["bindings"][0]["members"] += [broad, "user:ops@example.com"]

    worst, out = gcp.verify(managed())
    assert worst is Check.WRONG
    assert f"also lets {broad} impersonate it" in out
    (outcome,), out = gcp.install(managed())
    assert outcome.ok, out
    assert gcp.policy(name)["roles/iam.workloadIdentityUser"] == [
        MEMBER,
        "user:ops@example.com",
    ]


def test_dry_run_prints_every_call_and_changes_nothing(gcp: Gcp) -> None:
    (outcome,), out = gcp.install(managed(), dry_run=True)
    assert outcome.ok and outcome.changed
    assert "dry run: would make 6 calls, made none" in out
    assert (
        "iam.googleapis.com POST v1/projects/123456789012/locations/global/"
        "workloadIdentityPools?workloadIdentityPoolId=cluster-pool" in out
    )
    assert (
        "cloudresourcemanager.googleapis.com POST v1/projects/proj-one:setIamPolicy"
        in out
    )
    assert "needs: iam.workloadIdentityPools.create" in out
    assert not any(r.startswith(("PATCH", "DELETE")) for r in gcp.iam.requests)
    assert all(":getIamPolicy" in r or r.startswith("GET") for r in gcp.iam.requests)
    assert not gcp.iam.pools and not gcp.iam.service_accounts
    assert not gcp.state.exists()


def test_a_missing_permission_is_named_and_recorded_as_failed(gcp: Gcp) -> None:
    gcp.iam.denied = {"iam.roles.create"}
    (outcome,), out = gcp.install(managed())
    assert not outcome.ok
    assert "missing permission iam.roles.create" in out
    assert "grant a role that includes iam.roles.create" in out
    record = LocalStateFile(str(gcp.state)).load()["reports"]
    assert record.failure is not None and "iam.roles.create" in record.failure.message


def test_verify_without_read_permission_says_so_and_does_not_call_the_setup_wrong(
    gcp: Gcp,
) -> None:
    gcp.install(managed())
    gcp.iam.denied = {"iam.workloadIdentityPoolProviders.get", "iam.roles.get"}
    worst, out = gcp.verify(managed())
    assert worst is Check.UNKNOWN, out
    assert (
        "UNKNOWN pool provider: cannot read it: missing permission "
        "iam.workloadIdentityPoolProviders.get" in out
    )
    assert "UNKNOWN custom role" in out
    assert "WRONG" not in out


def test_a_quota_reached_says_so(gcp: Gcp) -> None:
    gcp.iam.quotas = {"serviceAccounts": 0}
    (outcome,), out = gcp.install(managed())
    assert not outcome.ok
    assert "RESOURCE_EXHAUSTED" in out and "a quota is reached" in out


def test_a_deleted_role_keeps_its_name_and_install_says_how_to_get_it_back(
    gcp: Gcp,
) -> None:
    gcp.install(managed())
    session = AuthorizedSession(admin_credentials(gcp.iam, gcp.url))
    assert session.delete(f"{gcp.url}/v1/{ROLE}").status_code == 200
    (outcome,), out = gcp.install(managed())
    assert not outcome.ok
    assert "was deleted; Google keeps its ID reserved for 37 days" in out
    assert (
        "gcloud iam roles undelete workloadIdentity_reports --project proj-one" in out
    )
    create = session.post(
        f"{gcp.url}/v1/projects/proj-one/roles",
        json={
            "roleId": "workloadIdentity_reports",
            "role": {"includedPermissions": []},
        },
    )
    assert create.status_code == 409 and "deleted" in create.json()["error"]["message"]


def test_a_deleted_pool_keeps_its_name_and_install_says_how_to_get_it_back(
    gcp: Gcp,
) -> None:
    gcp.install(managed())
    session = AuthorizedSession(admin_credentials(gcp.iam, gcp.url))
    assert session.delete(f"{gcp.url}/v1/{POOL}").json()["done"] is False
    (outcome,), out = gcp.install(managed())
    assert not outcome.ok
    assert "was deleted; Google keeps its ID reserved for 30 days" in out
    assert "gcloud iam workload-identity-pools undelete cluster-pool" in out


def test_manual_provider_setup_prints_what_to_create_and_verify_checks_it(
    gcp: Gcp,
) -> None:
    manual = ProviderSetup.MANUAL
    (outcome,), out = gcp.install(managed(), setup=manual)
    assert outcome.ok, out
    assert f"provider:          {PROVIDER}" in out
    assert "google.subject=assertion.sub" in out
    assert (
        "gcloud iam workload-identity-pools providers create-oidc cluster-oidc" in out
    )
    assert not gcp.iam.pools
    worst, out = gcp.verify(managed(), setup=manual)
    assert worst is Check.WRONG and "WRONG   workload identity pool" in out

    gcp.install(managed())  # what the admin would have created by hand
    worst, out = gcp.verify(managed(), setup=manual)
    assert worst is Check.OK, out


def test_an_existing_account_is_adopted_its_binding_printed_and_verified(
    gcp: Gcp,
) -> None:
    existing = gcp_document("reports", permissions={"mode": "existing"})
    session = AuthorizedSession(admin_credentials(gcp.iam, gcp.url))
    session.post(
        f"{gcp.url}/v1/projects/proj-one/serviceAccounts", json={"accountId": "reports"}
    ).raise_for_status()

    (outcome,), out = gcp.install(existing)
    assert not outcome.ok
    assert (
        f"gcloud iam service-accounts add-iam-policy-binding {EMAIL} "
        f"--role=roles/iam.workloadIdentityUser --member={MEMBER}" in out
    )
    assert f"does not name {MEMBER}" in out

    policy = session.post(
        f"{gcp.url}/v1/projects/-/serviceAccounts/{EMAIL}:getIamPolicy"
    ).json()
    policy["bindings"] = [
        {"role": "roles/iam.workloadIdentityUser", "members": [MEMBER]}
    ]
    session.post(
        f"{gcp.url}/v1/projects/-/serviceAccounts/{EMAIL}:setIamPolicy",
        json={"policy": policy},
    ).raise_for_status()
    (outcome,), out = gcp.install(existing)
    assert outcome.ok, out
    assert [c.short() for c in outcome.calls] == [
        "create workloadIdentityPools",
        "create providers",
    ], "the account is left as it is"
    worst, out = gcp.verify(existing)
    assert worst is Check.OK, out


def test_the_fake_refuses_a_stale_etag_a_bad_id_and_a_caller_without_a_token(
    gcp: Gcp,
) -> None:
    gcp.install(managed())
    session = AuthorizedSession(admin_credentials(gcp.iam, gcp.url))
    stale = session.post(
        f"{gcp.url}/v1/projects/-/serviceAccounts/{EMAIL}:setIamPolicy",
        json={"policy": {"etag": "stale", "bindings": []}},
    )
    assert stale.status_code == 409 and stale.json()["error"]["status"] == "ABORTED"
    bad = session.post(
        f"{gcp.url}/v1/projects/123456789012/locations/global/workloadIdentityPools"
        "?workloadIdentityPoolId=gcp-reserved",
        json={},
    )
    assert bad.status_code == 400
    anonymous = requests.get(f"{gcp.url}/v1/{POOL}", timeout=5)
    assert anonymous.status_code == 401
    no_subject = session.patch(
        f"{gcp.url}/v1/{PROVIDER}?updateMask=attributeMapping",
        json={"attributeMapping": {"attribute.identity": "assertion.sub"}},
    )
    assert no_subject.status_code == 400
    assert "google.subject" in no_subject.json()["error"]["message"]


def test_the_cli_installs_and_reports_status_for_gcp(
    gcp: Gcp, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(
        "webhook.cloud.gcp.authorized_session",
        lambda: AuthorizedSession(admin_credentials(gcp.iam, gcp.url)),
    )
    identities = write_identities(tmp_path / "ids.yaml", managed())
    common = [
        "--identities",
        str(identities),
        "--issuer-url",
        gcp.issuer.url,
        "--jwks-file",
        str(gcp.issuer.jwks_file),
    ]
    cloud = [
        "--gcp-iam-url",
        gcp.url,
        "--gcp-resource-manager-url",
        f"{gcp.url}/crm",
    ]
    state = ["--state-file", str(gcp.state)]
    out = io.StringIO()
    assert main(["install", *common, *cloud, *state], out=out) == 0, out.getvalue()
    out = io.StringIO()
    assert main(["verify", *common, *cloud], out=out) == 0, out.getvalue()
    out = io.StringIO()
    assert main(["status", *common, *state, "--output", "json"], out=out) == 0
    (status,) = json.loads(out.getvalue())["identities"]
    assert status["state"] == "installed"
    out = io.StringIO()
    assert main(["status", *common[:-2], *state, "--output", "json"], out=out) == 0
    (status,) = json.loads(out.getvalue())["identities"]
    assert status["state"] == "pending", "an install without the JWKS differs"
