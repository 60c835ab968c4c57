"""Fixtures of the reliability suite.

The fast form runs with `make test`; `WI_SOAK=1` (what `make soak` sets) runs
the same tests with the long counts. What the tests measure is printed at the
end of the run and, with WI_RELIABILITY_FIGURES=FILE, written there as JSON.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.reliability.support import SOAK, Figures, Processes

FIGURES = Figures()


@pytest.fixture(scope="session")
def figures() -> Figures:
    return FIGURES


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Processes]:
    """Processes started for the test; killed after it, and the test fails if
    any of them logged something that looks like a secret."""
    started = Processes(tmp_path)
    yield started
    leaked = started.finish()
    assert not leaked, "a process logged a secret:\n  " + "\n  ".join(leaked)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not FIGURES.values:
        return
    terminalreporter.section(f"reliability figures ({'soak' if SOAK else 'fast'} form)")
    for section, values in sorted(FIGURES.values.items()):
        shown = ", ".join(f"{k}={v}" for k, v in sorted(values.items()))
        terminalreporter.write_line(f"{section}: {shown}")
    target = os.environ.get("WI_RELIABILITY_FIGURES")
    if target:
        Path(target).write_text(FIGURES.dump() + "\n")
        terminalreporter.write_line(f"written to {target}")
