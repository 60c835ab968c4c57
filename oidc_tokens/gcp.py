"""The `external_account` credential configuration that Google's SDKs read."""

from __future__ import annotations

from typing import Any, Final

DEFAULT_STS_URL: Final = "https://sts.googleapis.com/v1/token"
DEFAULT_IAM_CREDENTIALS_URL: Final = "https://iamcredentials.googleapis.com"
JWT_TOKEN_TYPE: Final = "urn:ietf:params:oauth:token-type:jwt"


def provider_audience(project_number: str, pool_id: str, provider_id: str) -> str:
    """The provider's full resource name: STS requires this, never the pool's."""
    return (
        f"//iam.googleapis.com/projects/{project_number}/locations/global/"
        f"workloadIdentityPools/{pool_id}/providers/{provider_id}"
    )


def credential_config(
    *,
    audience: str,
    token_file: str,
    service_account_email: str = "",
    sts_url: str = DEFAULT_STS_URL,
    iam_credentials_url: str = DEFAULT_IAM_CREDENTIALS_URL,
) -> dict[str, Any]:
    if "/providers/" not in audience:
        raise ValueError(
            f"GCP audience {audience!r} names no provider; it must be "
            "//iam.googleapis.com/projects/N/locations/global/"
            "workloadIdentityPools/POOL/providers/PROVIDER"
        )
    config: dict[str, Any] = {
        "type": "external_account",
        "audience": audience,
        "subject_token_type": JWT_TOKEN_TYPE,
        "token_url": sts_url,
        "credential_source": {"file": token_file, "format": {"type": "text"}},
    }
    if service_account_email:
        config["service_account_impersonation_url"] = (
            f"{iam_credentials_url.rstrip('/')}/v1/projects/-/serviceAccounts/"
            f"{service_account_email}:generateAccessToken"
        )
    return config
