"""`install`, `verify` and `status` for AWS, against moto's server on 127.0.0.1."""

from __future__ import annotations

import io
import json
import stat
from pathlib import Path
from typing import Any

import boto3
import pytest
import requests

from tests.webhook.cloud.support import (
    ACCOUNT,
    aws_document,
    s3_policy,
    write_identities,
)
from webhook.aws_trust import trust_policy
from webhook.cli import main
from webhook.identities import parse_identity
from webhook.status import permissions_hash

ISSUER = "https://127.0.0.1:8443/clusters/one"
PROVIDER_ARN = f"arn:aws:iam::{ACCOUNT}:oidc-provider/127.0.0.1:8443/clusters/one"


@pytest.fixture(autouse=True)
def aws_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "moto-admin")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "moto-admin")


def iam(url: str) -> Any:
    return boto3.client(
        "iam",
        endpoint_url=url,
        region_name="us-east-1",
        aws_access_key_id="moto-admin",
        aws_secret_access_key="moto-admin",
    )


def run(
    command: str, identities: Path, url: str, state: Path, *extra: str
) -> tuple[int, str]:
    out = io.StringIO()
    argv = [
        command,
        "--identities",
        str(identities),
        "--issuer-url",
        ISSUER,
        "--aws-endpoint-url",
        url,
        *extra,
    ]
    if command != "verify":
        argv += ["--state-file", str(state)]
    code = main(argv, out=out)
    return code, out.getvalue()


def status(identities: Path, state: Path) -> dict[str, Any]:
    out = io.StringIO()
    code = main(
        [
            "status",
            "--identities",
            str(identities),
            "--issuer-url",
            ISSUER,
            "--state-file",
            str(state),
            "--output",
            "json",
        ],
        out=out,
    )
    assert code == 0
    return {item["name"]: item for item in json.loads(out.getvalue())["identities"]}


def managed(name: str = "reports", *actions: str) -> dict[str, Any]:
    return aws_document(
        name,
        permissions={"mode": "managed", "policyDocument": s3_policy(*actions)},
    )


def test_install_creates_provider_role_and_policy_and_a_second_run_changes_nothing(
    tmp_path: Path, moto: str
) -> None:
    document = managed()
    identities = write_identities(tmp_path / "ids.yaml", document)
    state = tmp_path / "state.json"

    code, out = run("install", identities, moto, state)
    assert code == 0, out
    assert "iam CreateOpenIDConnectProvider" in out
    assert "iam CreateRole" in out and "iam PutRolePolicy" in out

    client = iam(moto)
    provider = client.get_open_id_connect_provider(
        OpenIDConnectProviderArn=PROVIDER_ARN
    )
    assert provider["ClientIDList"] == ["sts.amazonaws.com"]
    role = client.get_role(RoleName="reports")["Role"]
    assert role["AssumeRolePolicyDocument"] == trust_policy(
        parse_identity(document), ISSUER
    )
    inline = client.get_role_policy(RoleName="reports", PolicyName="workload-identity")
    assert inline["PolicyDocument"] == s3_policy()

    code, again = run("install", identities, moto, state)
    assert code == 0, again
    assert "reports (aws): up to date, nothing to change" in again
    assert "1 installed (0 changed)" in again
    installed = status(identities, state)["reports"]
    assert installed["state"] == "installed"
    assert installed["summary"].startswith(
        "the spec installed at "
    )  # no generations in a file


def test_the_trust_policy_pins_provider_audience_and_the_identity_sub(
    tmp_path: Path, moto: str
) -> None:
    identities = write_identities(tmp_path / "ids.yaml", managed())
    run("install", identities, moto, tmp_path / "state.json")
    trust = iam(moto).get_role(RoleName="reports")["Role"]["AssumeRolePolicyDocument"]
    statement = trust["Statement"][0]
    assert statement["Principal"] == {"Federated": PROVIDER_ARN}
    assert statement["Condition"] == {
        "StringEquals": {"127.0.0.1:8443/clusters/one:aud": "sts.amazonaws.com"},
        "StringLike": {"127.0.0.1:8443/clusters/one:sub": "reports:*"},
    }


def test_a_permission_change_is_pending_until_installed_and_status_shows_the_difference(
    tmp_path: Path, moto: str
) -> None:
    identities = write_identities(tmp_path / "ids.yaml", managed())
    state = tmp_path / "state.json"
    assert run("install", identities, moto, state)[0] == 0

    write_identities(identities, managed("reports", "s3:GetObject", "s3:PutObject"))
    pending = status(identities, state)["reports"]
    assert pending["state"] == "pending"
    assert pending["difference"][0] == "permissions.policyDocument:"
    assert '  +        "s3:PutObject"' in pending["difference"], pending
    stored = iam(moto).get_role_policy(
        RoleName="reports", PolicyName="workload-identity"
    )
    assert stored["PolicyDocument"] == s3_policy(), "nothing changes before install"

    code, out = run("install", identities, moto, state)
    assert code == 0, out
    assert "iam PutRolePolicy" in out and "iam CreateRole" not in out
    assert status(identities, state)["reports"]["state"] == "installed"
    stored = iam(moto).get_role_policy(
        RoleName="reports", PolicyName="workload-identity"
    )
    assert stored["PolicyDocument"] == s3_policy("s3:GetObject", "s3:PutObject")


def test_a_scope_change_needs_no_install(tmp_path: Path, moto: str) -> None:
    identities = write_identities(tmp_path / "ids.yaml", managed())
    state = tmp_path / "state.json"
    run("install", identities, moto, state)
    changed = managed()
    changed["spec"]["scope"] = {"projects": {"names": ["payments", "billing"]}}
    write_identities(identities, changed)
    assert status(identities, state)["reports"]["state"] == "installed"


def test_status_lists_every_identity_and_one_never_installed_is_pending(
    tmp_path: Path, moto: str
) -> None:
    identities = write_identities(tmp_path / "ids.yaml", managed())
    state = tmp_path / "state.json"
    run("install", identities, moto, state)
    write_identities(identities, managed(), managed("billing"))
    out = io.StringIO()
    main(
        [
            "status",
            "--identities",
            str(identities),
            "--issuer-url",
            ISSUER,
            "--state-file",
            str(state),
        ],
        out=out,
    )
    lines = out.getvalue().splitlines()
    assert lines[0].split() == ["IDENTITY", "PROVIDER", "STATE", "DETAIL"]
    assert any(line.split()[:3] == ["reports", "aws", "installed"] for line in lines)
    assert any(
        line.split()[:3] == ["billing", "aws", "pending"] and "never installed" in line
        for line in lines
    )


def test_dry_run_prints_every_call_and_changes_nothing(
    tmp_path: Path, moto: str
) -> None:
    identities = write_identities(tmp_path / "ids.yaml", managed())
    state = tmp_path / "state.json"
    code, out = run("install", identities, moto, state, "--dry-run")
    assert code == 0, out
    assert "dry run: would make 3 calls, made none" in out
    for call in ("CreateOpenIDConnectProvider", "CreateRole", "PutRolePolicy"):
        assert f"iam {call}" in out
    assert '"RoleName": "reports"' in out and "needs: iam:CreateRole" in out
    assert "nothing was changed" in out
    client = iam(moto)
    assert client.list_open_id_connect_providers()["OpenIDConnectProviderList"] == []
    assert client.list_roles()["Roles"] == []
    assert not state.exists()


def test_a_dry_run_lists_a_shared_provider_once(tmp_path: Path, moto: str) -> None:
    identities = write_identities(tmp_path / "ids.yaml", managed(), managed("billing"))
    code, out = run("install", identities, moto, tmp_path / "s.json", "--dry-run")
    assert code == 0, out
    assert out.count("iam CreateOpenIDConnectProvider") == 2  # once, then a note
    assert "is planned above, for billing" in out


def test_an_existing_role_is_adopted_its_trust_printed_and_verified(
    tmp_path: Path, moto: str
) -> None:
    document = aws_document("reports", permissions={"mode": "existing"})
    identities = write_identities(tmp_path / "ids.yaml", document)
    client = iam(moto)
    client.create_role(
        RoleName="reports",
        AssumeRolePolicyDocument=json.dumps(
            trust_policy(parse_identity(document), ISSUER)
        ),
    )
    code, out = run("install", identities, moto, tmp_path / "state.json")
    assert code == 0, out
    assert "is managed elsewhere (permissions.mode: existing)" in out
    assert '"reports:*"' in out  # the trust policy it needs, printed
    assert "CreateRole" not in out and "UpdateAssumeRolePolicy" not in out

    code, out = run("verify", identities, moto, tmp_path / "state.json")
    assert code == 0, out
    assert "ok      trust policy: admits reports's tokens" in out


def test_verify_finds_an_existing_role_that_trusts_every_identity(
    tmp_path: Path, moto: str
) -> None:
    document = aws_document("reports", permissions={"mode": "existing"})
    identities = write_identities(tmp_path / "ids.yaml", document)
    broad = trust_policy(parse_identity(document), ISSUER)
    broad["Statement"][0]["Condition"]["StringLike"] = {
        "127.0.0.1:8443/clusters/one:sub": "*"
    }
    client = iam(moto)
    client.create_open_id_connect_provider(
        Url=ISSUER, ClientIDList=["sts.amazonaws.com"]
    )
    client.create_role(RoleName="reports", AssumeRolePolicyDocument=json.dumps(broad))

    code, out = run("verify", identities, moto, tmp_path / "state.json")
    assert code == 1, out
    assert "sub '*' admits tokens of other identities" in out
    code, out = run("install", identities, moto, tmp_path / "state.json")
    assert code == 1, out
    assert "cannot install" in out


def test_verify_reports_a_missing_role_as_wrong(tmp_path: Path, moto: str) -> None:
    identities = write_identities(
        tmp_path / "ids.yaml", aws_document("reports", permissions={"mode": "existing"})
    )
    code, out = run("verify", identities, moto, tmp_path / "state.json")
    assert code == 1
    assert "WRONG   role: arn:aws:iam::123456789012:role/reports does not exist" in out
    assert "WRONG   OIDC provider" in out


def test_manual_provider_setup_prints_what_to_create_and_verify_checks_it(
    tmp_path: Path, moto: str
) -> None:
    identities = write_identities(tmp_path / "ids.yaml", managed())
    state = tmp_path / "state.json"
    code, out = run("install", identities, moto, state, "--provider-setup", "manual")
    assert code == 0, out
    assert f"provider URL:         {ISSUER}" in out
    assert "audience (client ID): sts.amazonaws.com" in out
    assert "CreateOpenIDConnectProvider" not in out

    code, out = run("verify", identities, moto, state, "--provider-setup", "manual")
    assert code == 1 and "WRONG   OIDC provider" in out
    iam(moto).create_open_id_connect_provider(
        Url=ISSUER, ClientIDList=["sts.amazonaws.com"]
    )
    code, out = run("verify", identities, moto, state, "--provider-setup", "manual")
    assert code == 0, out


def _limited_user(url: str, allowed: list[str]) -> tuple[str, str]:
    """An IAM user that may call only `allowed`; then IAM checks go on."""
    client = iam(url)
    client.create_user(UserName="limited")
    client.put_user_policy(
        UserName="limited",
        PolicyName="limited",
        PolicyDocument=json.dumps(
            {
                "Version": "2012-10-17",
                "Statement": [{"Effect": "Allow", "Action": allowed, "Resource": "*"}],
            }
        ),
    )
    key = client.create_access_key(UserName="limited")["AccessKey"]
    requests.post(f"{url}/moto-api/reset-auth", data=b"0", timeout=10)
    return key["AccessKeyId"], key["SecretAccessKey"]


def test_verify_without_read_permission_says_so_and_does_not_call_the_setup_wrong(
    tmp_path: Path, moto: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    identities = write_identities(tmp_path / "ids.yaml", managed())
    state = tmp_path / "state.json"
    assert run("install", identities, moto, state)[0] == 0
    key, secret = _limited_user(
        moto, ["sts:GetCallerIdentity", "iam:GetRole", "iam:GetRolePolicy"]
    )
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)

    code, out = run("verify", identities, moto, state)
    assert code == 3, out
    assert (
        "UNKNOWN OIDC provider: cannot read it: missing permission "
        "iam:GetOpenIDConnectProvider" in out
    )
    assert "this says nothing about whether the setup is right" in out
    assert "WRONG" not in out
    assert "ok      trust policy" in out


def test_install_without_a_permission_names_it_and_status_shows_failed(
    tmp_path: Path, moto: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    identities = write_identities(tmp_path / "ids.yaml", managed())
    state = tmp_path / "state.json"
    key, secret = _limited_user(
        moto,
        [
            "sts:GetCallerIdentity",
            "iam:Get*",
            "iam:CreateOpenIDConnectProvider",
            "iam:TagOpenIDConnectProvider",
        ],
    )
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)

    code, out = run("install", identities, moto, state)
    assert code == 1, out
    assert "missing permission iam:CreateRole" in out
    assert "grant iam:CreateRole to the AWS credentials" in out
    failed = status(identities, state)["reports"]
    assert failed["state"] == "failed"
    assert "iam:CreateRole" in failed["summary"]


def test_the_state_file_is_readable_by_its_owner_only(
    tmp_path: Path, moto: str
) -> None:
    identities = write_identities(tmp_path / "ids.yaml", managed())
    state = tmp_path / "state.json"
    run("install", identities, moto, state)
    assert stat.S_IMODE(state.stat().st_mode) == 0o600
    record = json.loads(state.read_text())["identities"]["reports"]
    assert record["installedSpecHash"].startswith("sha256:")
    assert record["installedPermissionsHash"] == permissions_hash(
        {"mode": "managed", "policyDocument": s3_policy()}
    )
    assert record["installedGeneration"] == 0
    assert record["providerSetup"] == {
        "mode": "automatic",
        "oidcProviderArn": PROVIDER_ARN,
    }


def test_two_identities_managing_one_role_are_refused(
    tmp_path: Path, moto: str
) -> None:
    first = managed("reports")
    second = aws_document(
        "billing",
        role="reports",
        permissions={"mode": "managed", "policyDocument": s3_policy()},
    )
    identities = write_identities(tmp_path / "ids.yaml", first, second)
    code, out = run("install", identities, moto, tmp_path / "state.json")
    assert code == 1
    assert "is managed by billing, reports" in out
    assert iam(moto).list_roles()["Roles"] == []


def test_credentials_for_another_account_are_refused_before_any_change(
    tmp_path: Path, moto: str
) -> None:
    document = managed()
    document["spec"]["aws"]["roleArn"] = "arn:aws:iam::111122223333:role/reports"
    identities = write_identities(tmp_path / "ids.yaml", document)
    code, out = run("install", identities, moto, tmp_path / "state.json")
    assert code == 1
    assert "the AWS credentials are for account 123456789012" in out
    assert "use credentials for account 111122223333" in out


def test_an_invalid_permissions_block_names_the_field(
    tmp_path: Path, moto: str
) -> None:
    document = aws_document(
        "reports", permissions={"mode": "managed", "permissions": ["s3.get"]}
    )
    identities = write_identities(tmp_path / "ids.yaml", document)
    code, out = run("install", identities, moto, tmp_path / "state.json")
    assert code == 1
    assert "spec.permissions.permissions: is for GCP identities" in out


def test_missing_flags_say_what_to_pass(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    identities = write_identities(tmp_path / "ids.yaml", managed())
    assert main(["install", "--identities", str(identities)]) == 2
    assert "pass --issuer-url https://" in capsys.readouterr().err
    assert main(["install", "--issuer-url", ISSUER]) == 2
    assert "pass --identities FILE" in capsys.readouterr().err
    code = main(["status", "--identities", str(identities), "--issuer-url", "http://x"])
    assert code == 2
    assert "must start with https://" in capsys.readouterr().err


def test_debug_logs_never_carry_the_aws_session_token(
    tmp_path: Path,
    moto: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """botocore logs each request's headers at DEBUG, X-Amz-Security-Token
    among them: `--log-level DEBUG` must not let that through."""
    secret = "SECRET-SESSION-TOKEN-1b7f"
    monkeypatch.setenv("AWS_SESSION_TOKEN", secret)
    identities = write_identities(tmp_path / "ids.yaml", managed())
    code, out = run(
        "install", identities, moto, tmp_path / "state.json", "--log-level", "DEBUG"
    )
    assert code == 0, out
    err = capsys.readouterr().err
    assert secret not in err
    assert "X-Amz-Security-Token" not in err
