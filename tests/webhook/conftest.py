from __future__ import annotations

from pathlib import Path

import pytest

from oidc_tokens.keys import generate_rsa_key, private_key_pem
from tests.webhook.casefiles import load_case
from webhook.cache import Cache
from webhook.identities import parse_identities
from webhook.issuer import Issuer
from webhook.metrics import create_metrics
from webhook.namespaces import namespaces_from_documents
from webhook.server import Services
from webhook.sidecar_spec import SidecarSettings


@pytest.fixture(scope="session")
def signing_key_pem() -> bytes:
    return private_key_pem(generate_rsa_key())


@pytest.fixture
def issuer(signing_key_pem: bytes) -> Issuer:
    from oidc_tokens.keys import load_private_key

    return Issuer(
        url="https://issuer.test",
        signing_key=load_private_key(signing_key_pem),
        published=(),
    )


@pytest.fixture
def services(issuer: Issuer) -> Services:
    """Services loaded with case-01's identities and namespaces."""
    case = load_case("case-01")
    cache = Cache(create_metrics())
    loaded = parse_identities(case["given"]["identities"])
    cache.set_identities(loaded.identities, loaded.errors)
    cache.set_namespaces(
        namespaces_from_documents(
            case["given"]["namespaces"], webhook_namespace="workload-identity-system"
        )
    )
    return Services(
        cache=cache,
        settings=SidecarSettings(issuer_url=issuer.url),
        issuer=issuer,
        metrics=cache.metrics,
    )


@pytest.fixture
def key_file(tmp_path: Path, signing_key_pem: bytes) -> Path:
    path = tmp_path / "key.pem"
    path.write_bytes(signing_key_pem)
    path.chmod(0o600)
    return path
