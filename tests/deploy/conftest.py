"""Fixtures for the deploy/ tests.

The manifests are rendered with the real `kubectl kustomize`, the alerts
checked with the real `promtool` and evaluated by a real `prometheus`. A
missing tool skips its tests on a developer machine and fails them under
CI=true, where a skip would hide that nothing was checked (`make test`
installs Debian's prometheus package, which brings both).
"""

from __future__ import annotations

import pytest
from deploy_support import require_tool

_PROMETHEUS_PACKAGE = "run `make promtool` or `apt-get install -y prometheus` (Debian)"


@pytest.fixture(scope="session")
def promtool() -> str:
    return require_tool("promtool", _PROMETHEUS_PACKAGE)


@pytest.fixture(scope="session")
def prometheus() -> str:
    return require_tool("prometheus", _PROMETHEUS_PACKAGE)
