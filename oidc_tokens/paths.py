"""Where tokens live inside a pod. Every container that is injected mounts the
token volume at TOKEN_DIR, the sidecar included, so one path serves all."""

from typing import Final

TOKEN_DIR: Final = "/var/run/secrets/workloadidentity.dev"
AWS_TOKEN_FILE: Final = "aws-token"
GCP_TOKEN_FILE: Final = "gcp-token"
GCP_CREDENTIALS_FILE: Final = "gcp-credentials.json"


def in_token_dir(name: str, token_dir: str = TOKEN_DIR) -> str:
    """Join a file name onto the token directory without doubling slashes."""
    return f"{token_dir.rstrip('/')}/{name}"
