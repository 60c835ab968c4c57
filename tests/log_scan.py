"""Forbidden patterns: what must never appear in a log line, a metrics page, an
error message, a warning or an annotation.

`tests/conftest.py` checks every log record of every test against them; the
reliability suite also checks the logs of the processes it starts and the
pages and answers they serve.
"""

from __future__ import annotations

import logging
import re
import threading
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Final

JWT_SHAPED: Final = re.compile(
    r"eyJ[A-Za-z0-9_-]{4,}\.eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*"
)
"""A compact JWS whose header and payload are JSON objects (`{"` is `eyJ`)."""

PEM_PRIVATE_KEY: Final = re.compile(
    r"-----BEGIN [A-Z ]*PRIVATE KEY-----\s*[A-Za-z0-9+/=\s]{40,}"
)
"""A private key block with its body; a bare header in a hint is no secret."""

PATTERNS: Final = {"JWT": JWT_SHAPED, "PEM private key": PEM_PRIVATE_KEY}


def secrets_in(text: str, extra: Iterable[str] = ()) -> list[str]:
    """What in `text` looks like a secret, or is one of `extra`; shortened so
    that a failing test never prints the secret itself."""
    found = [
        f"{kind} {match.group()[:12]}..."
        for kind, pattern in PATTERNS.items()
        for match in pattern.finditer(text)
    ]
    found += [f"known secret {s[:8]}..." for s in extra if s and s in text]
    return found


def _record_text(record: logging.LogRecord) -> str:
    try:
        text = record.getMessage()
    except Exception:  # a malformed call still shows its parts
        text = f"{record.msg!r} {record.args!r}"
    if record.exc_info and record.exc_info[1] is not None:
        text += "\n" + "".join(traceback.format_exception(record.exc_info[1]))
    if record.stack_info:
        text += "\n" + record.stack_info
    return text


@dataclass
class LogScanner:
    """Checks each log record as it is made.

    It wraps the log record factory rather than adding a handler, so code that
    replaces the root handlers (`webhook.logs.configure`) cannot switch it off.
    """

    found: list[str] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _previous: Callable[..., logging.LogRecord] | None = None

    def install(self) -> None:
        previous = logging.getLogRecordFactory()
        self._previous = previous

        def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
            record = previous(*args, **kwargs)
            self.check(record)
            return record

        logging.setLogRecordFactory(factory)

    def uninstall(self) -> None:
        if self._previous is not None:
            logging.setLogRecordFactory(self._previous)
            self._previous = None

    def check(self, record: logging.LogRecord) -> None:
        hits = secrets_in(_record_text(record))
        if hits:
            with self._lock:
                self.found += [f"{record.name} ({record.levelname}): {h}" for h in hits]

    def take(self) -> list[str]:
        with self._lock:
            found, self.found = self.found, []
        return found
