"""AWS I/O for install and verify: read the account with boto3, make calls.

Everything that decides lives in `aws_plan`; this module only reads what
exists and makes the calls a plan lists, turning botocore's errors into
`CloudError`s that say what to do.
"""

from __future__ import annotations

import json
import urllib.parse
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import boto3
import botocore.config
import botocore.exceptions
from botocore import xform_name

from webhook.aws_trust import partition_of, provider_arn
from webhook.cloud.aws_plan import (
    POLICY_NAME,
    AwsObserved,
    OidcProvider,
    Role,
    plan_aws,
    role_path_and_name,
    verify_aws,
)
from webhook.cloud.errors import CloudError, ErrorKind, aws_permission, explain_aws
from webhook.cloud.plan import Call, Finding, Plan, ReadDenied
from webhook.cloud.spec import InstallOptions, RoleMode, parse_permissions
from webhook.identities import Identity

T = TypeVar("T")

_IAM_REGION = {
    "aws": "us-east-1",
    "aws-us-gov": "us-gov-west-1",
    "aws-cn": "cn-north-1",
}
_DENIED = ("AccessDenied", "AccessDeniedException", "UnauthorizedOperation")


def _document(raw: Any) -> Mapping[str, Any]:
    """boto3 decodes policy documents; other clients may pass the URL-encoded text."""
    if isinstance(raw, str):
        decoded: Mapping[str, Any] = json.loads(urllib.parse.unquote(raw))
        return decoded
    return dict(raw)


class AwsCloud:
    """Reads and changes IAM for install and verify, through one boto3 session."""

    def __init__(
        self,
        session: boto3.session.Session | None = None,
        *,
        endpoint_url: str | None = None,
    ) -> None:
        self._session = session or boto3.session.Session()
        self._endpoint_url = endpoint_url
        self._clients: dict[tuple[str, str], Any] = {}

    def _client(self, service: str, partition: str = "aws") -> Any:
        region = _IAM_REGION.get(partition, "us-east-1")
        key = (service, region)
        if key not in self._clients:
            self._clients[key] = self._session.client(
                service,
                region_name=region,
                endpoint_url=self._endpoint_url,
                config=botocore.config.Config(
                    connect_timeout=10, read_timeout=30, retries={"mode": "standard"}
                ),
            )
        return self._clients[key]

    def _call(self, operation: str, action: Callable[[], T]) -> T:
        try:
            return action()
        except botocore.exceptions.ClientError as exc:
            error = exc.response.get("Error", {})
            raise explain_aws(
                operation, str(error.get("Code", "")), str(error.get("Message", ""))
            ) from exc
        except botocore.exceptions.NoCredentialsError as exc:
            raise CloudError(
                "no AWS credentials found",
                "set AWS_PROFILE, or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, "
                "or log in with `aws sso login`",
                kind=ErrorKind.CREDENTIALS,
            ) from exc
        except botocore.exceptions.EndpointConnectionError as exc:
            raise CloudError(
                f"cannot reach AWS at {exc.kwargs.get('endpoint_url', '')}",
                "check the network, or --aws-endpoint-url",
                kind=ErrorKind.UNREACHABLE,
            ) from exc

    def _read(self, operation: str, action: Callable[[], T]) -> T | ReadDenied | None:
        """None when the entity does not exist; ReadDenied without permission."""
        try:
            return self._call(operation, action)
        except CloudError as exc:
            cause = exc.__cause__
            if isinstance(cause, botocore.exceptions.ClientError):
                code = cause.response.get("Error", {}).get("Code", "")
                if code == "NoSuchEntity":
                    return None
                if code in _DENIED:
                    return ReadDenied(
                        exc.permission or aws_permission(operation), str(exc)
                    )
            raise

    # --- observe ------------------------------------------------------------

    def observe(self, identity: Identity, issuer_url: str) -> AwsObserved:
        assert identity.aws is not None
        partition = partition_of(identity.aws.role_arn)
        iam = self._client("iam", partition)
        sts = self._client("sts", partition)
        caller = self._call("GetCallerIdentity", sts.get_caller_identity)
        oidc_arn = provider_arn(issuer_url, identity.aws.role_arn)
        provider = self._read(
            "GetOpenIDConnectProvider",
            lambda: iam.get_open_id_connect_provider(OpenIDConnectProviderArn=oidc_arn),
        )
        _, name = role_path_and_name(identity.aws.role_arn)
        role = self._read("GetRole", lambda: iam.get_role(RoleName=name))
        policy: Any = None
        managed = parse_permissions(identity).mode is RoleMode.MANAGED
        if managed and isinstance(role, Mapping):
            policy = self._read(
                "GetRolePolicy",
                lambda: iam.get_role_policy(RoleName=name, PolicyName=POLICY_NAME),
            )
        return AwsObserved(
            account=str(caller["Account"]),
            provider=self._provider(oidc_arn, provider),
            role=self._role(role),
            policy=_document(policy["PolicyDocument"])
            if isinstance(policy, Mapping)
            else policy,
        )

    @staticmethod
    def _provider(arn: str, raw: Any) -> OidcProvider | ReadDenied | None:
        if not isinstance(raw, Mapping):
            return raw if isinstance(raw, ReadDenied) else None
        return OidcProvider(
            arn=arn,
            url=str(raw.get("Url", "")),
            client_ids=tuple(raw.get("ClientIDList", [])),
            thumbprints=tuple(raw.get("ThumbprintList", [])),
        )

    @staticmethod
    def _role(raw: Any) -> Role | ReadDenied | None:
        if not isinstance(raw, Mapping):
            return raw if isinstance(raw, ReadDenied) else None
        body = raw["Role"]
        return Role(
            arn=str(body["Arn"]), trust=_document(body["AssumeRolePolicyDocument"])
        )

    # --- the three things install and verify need ----------------------------

    def plan(self, identity: Identity, options: InstallOptions) -> Plan:
        observed = self.observe(identity, options.issuer_url)
        return plan_aws(
            identity,
            options.issuer_url,
            observed,
            setup=options.setup,
            thumbprints=options.thumbprints,
        )

    def verify(self, identity: Identity, options: InstallOptions) -> list[Finding]:
        observed = self.observe(identity, options.issuer_url)
        return verify_aws(identity, options.issuer_url, observed)

    def apply(self, identity: Identity, call: Call) -> None:
        assert identity.aws is not None
        client = self._client(call.api, partition_of(identity.aws.role_arn))
        method = getattr(client, xform_name(call.action))
        self._call(call.action, lambda: method(**call.params))
