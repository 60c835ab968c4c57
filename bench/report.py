"""The one table the benchmark prints: metric, measured median, target, verdict."""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Final

NO_TARGET: Final = "-"


class Verdict(StrEnum):
    PASS = "pass"
    MISS = "miss"
    INFO = "info"
    """A figure without a target of its own (context for the others)."""
    FAILED = "failed"
    """The measurement could not be made; the measured column says why."""


@dataclass(frozen=True, slots=True)
class Row:
    section: str
    metric: str
    measured: str
    target: str = NO_TARGET
    verdict: Verdict = Verdict.INFO


def at_least(value: float, target: float) -> Verdict:
    return Verdict.PASS if value >= target else Verdict.MISS


def at_most(value: float, target: float) -> Verdict:
    return Verdict.PASS if value <= target else Verdict.MISS


def both(*verdicts: Verdict) -> Verdict:
    """Pass only when every part passes."""
    if Verdict.FAILED in verdicts:
        return Verdict.FAILED
    return Verdict.MISS if Verdict.MISS in verdicts else Verdict.PASS


def median(values: Iterable[float]) -> float:
    """The median of the runs; NaN when there were none."""
    data = list(values)
    return statistics.median(data) if data else float("nan")


def rate(value: float) -> str:
    return f"{value:,.0f}/s"


def millis(seconds: float) -> str:
    if seconds < 0.001:
        return f"{seconds * 1e6:.0f} us"
    return f"{seconds * 1000:.1f} ms" if seconds < 0.1 else f"{seconds * 1000:.0f} ms"


def micros(seconds: float) -> str:
    return f"{seconds * 1e6:,.1f} us"


def mib(value: float) -> str:
    return f"{value:.1f} MiB"


def ratio(value: float) -> str:
    return f"{value:.2f}x"


_HEADERS: Final = ("metric", "measured (median)", "target", "result")


def format_table(rows: Sequence[Row], *, notes: Sequence[str] = ()) -> str:
    """Rows grouped under their section, columns padded to the widest cell."""
    cells = [(f"  {r.metric}", r.measured, r.target, r.verdict.value) for r in rows]
    widths = [
        max(len(h), *(len(c[i]) for c in cells)) if cells else len(h)
        for i, h in enumerate(_HEADERS)
    ]

    def line(values: Sequence[str]) -> str:
        return " | ".join(v.ljust(w) for v, w in zip(values, widths, strict=True))

    out = [line(_HEADERS), "-+-".join("-" * w for w in widths)]
    section = None
    for row, cell in zip(rows, cells, strict=True):
        if row.section != section:
            section = row.section
            out.append(line((section, "", "", "")))
        out.append(line(cell))
    out += [f"note: {note}" for note in notes]
    return "\n".join(line.rstrip() for line in out)
