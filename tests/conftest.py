"""Suite-wide guards.

- Whatever a test leaves unclosed (a socket, a transport, a file) is reported
  by the garbage collector at that test's end, not at a random later one:
  `collect_garbage` runs after every other fixture has been torn down.

- Nothing a test starts may reach a cloud or a metadata address, so the SDKs'
  fallbacks point at a closed loopback port.
- No log record of any test may hold a token or a private key: every record
  is checked as it is made (`tests/log_scan.py`), the product's own loggers
  down to DEBUG, and a test that logged one fails.
"""

import gc
import logging
import os
from collections.abc import Iterator

import pytest

from tests.log_scan import LogScanner

for name, value in {
    "AWS_EC2_METADATA_DISABLED": "true",
    "AWS_CONFIG_FILE": "/nonexistent/aws-config",
    "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/aws-credentials",
    "GCE_METADATA_HOST": "127.0.0.1:9",
    "GCE_METADATA_IP": "127.0.0.1:9",
    "NO_GCE_CHECK": "True",
}.items():
    os.environ[name] = value
for name in (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_PROFILE",
):
    os.environ.pop(name, None)

PRODUCT_LOGGERS = ("webhook", "sidecar", "oidc_tokens")
SCANNER = LogScanner()


def pytest_configure(config: pytest.Config) -> None:
    SCANNER.install()
    # Debug lines are where a token would slip in unnoticed: make them all.
    for name in PRODUCT_LOGGERS:
        logging.getLogger(name).setLevel(logging.DEBUG)


def pytest_unconfigure(config: pytest.Config) -> None:
    SCANNER.uninstall()


@pytest.fixture(autouse=True)
def collect_garbage() -> Iterator[None]:
    """Set up first, torn down last: the collection sees all the test left."""
    yield
    gc.collect()


@pytest.fixture(autouse=True)
def no_secret_is_logged() -> Iterator[None]:
    """Fail the test if any log record made while it ran held a secret."""
    SCANNER.take()  # what came before belongs to no test
    yield
    found = SCANNER.take()
    if found:
        pytest.fail(
            "log records held what looks like a secret:\n  " + "\n  ".join(found),
            pytrace=False,
        )
