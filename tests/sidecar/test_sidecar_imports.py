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


def test_pure_modules_stay_free_of_aiohttp() -> None:
    for name in ("schedule", "status", "config", "settings", "files", "tokens"):
        found = imports(REPO_ROOT / "sidecar" / f"{name}.py", top_level_only=False)
        assert not any(n.startswith("aiohttp") for n in found), name
