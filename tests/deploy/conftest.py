"""Fixtures for the deploy/ tests.

The manifests are rendered with the real `kubectl kustomize` and the alerts
checked with the real `promtool`. A missing tool skips its tests on a
developer machine and fails them under CI=true, where a skip would hide that
nothing was checked (`make test` installs promtool).
"""

from __future__ import annotations

import pytest
from deploy_support import require_tool


@pytest.fixture(scope="session")
def promtool() -> str:
    return require_tool(
        "promtool", "run `make promtool` or `apt-get install -y prometheus` (Debian)"
    )
