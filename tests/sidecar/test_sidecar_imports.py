"""Import boundaries of the sidecar package."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.sidecar.sidecar_helpers import REPO_ROOT

MODULES = sorted((REPO_ROOT / "sidecar").glob("*.py"))
CRYPTO = ("cryptography", "jwt", "oidc_tokens.keys", "oidc_tokens.signing")


def imports(path: Path, *, top_level_only: bool) -> list[str]:
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    found: list[str] = []
    for node in nodes:
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.append(node.module)
    return found


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.name)
def test_the_sidecar_never_imports_the_webhook(path: Path) -> None:
    for name in imports(path, top_level_only=False):
        assert name.split(".")[0] != "webhook"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.name)
def test_no_module_imports_crypto_at_import_time(path: Path) -> None:
    for name in imports(path, top_level_only=True):
        assert not name.startswith(CRYPTO), f"{path.name} imports {name} at the top"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.name)
def test_the_sidecar_speaks_http_with_the_standard_library(path: Path) -> None:
    for name in imports(path, top_level_only=False):
        assert name.split(".")[0] not in ("aiohttp", "requests", "httpx", "urllib3")


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.name)
def test_only_one_module_imports_prometheus_client(path: Path) -> None:
    """sidecar.prometheus imports the parts it needs without the package's
    __init__; an import elsewhere could come first and load all of it."""
    if path.name == "prometheus.py":
        return
    for name in imports(path, top_level_only=False):
        assert name.split(".")[0] != "prometheus_client", path.name


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.name)
def test_only_the_issuer_client_imports_ssl_at_the_top(path: Path) -> None:
    """A sidecar in key mode runs without the ssl module (sidecar.cli)."""
    if path.name in ("issuer.py", "http_client.py"):
        return
    assert "ssl" not in imports(path, top_level_only=True), path.name
