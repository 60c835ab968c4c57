"""Log setup: text or JSON lines on stderr, with the pod on every line.

As a last line of defence every formatted line is scrubbed of anything shaped
like a JWT or a PEM private key; the code itself never logs either.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from collections.abc import Mapping
from typing import Final, TextIO

_JWT: Final = re.compile(r"eyJ[A-Za-z0-9_-]*\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")
_PEM_KEY: Final = re.compile(
    r"-----BEGIN [A-Z ]*PRIVATE KEY-----.*?(-----END [A-Z ]*PRIVATE KEY-----|\Z)",
    re.DOTALL,
)
_MARK: Final = "_workload_identity_sidecar"


def redact(text: str) -> str:
    return _PEM_KEY.sub("[private key redacted]", _JWT.sub("[jwt redacted]", text))


class TextFormatter(logging.Formatter):
    def __init__(self, context: Mapping[str, str]) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")
        self._suffix = "".join(f" {key}={value}" for key, value in context.items())

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record) + self._suffix)


class JsonFormatter(logging.Formatter):
    def __init__(self, context: Mapping[str, str]) -> None:
        super().__init__()
        self._context = dict(context)

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": _iso_utc_millis(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            **self._context,
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return redact(json.dumps(entry))


def _iso_utc_millis(timestamp: float) -> str:
    seconds = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(timestamp))
    return f"{seconds}.{int(timestamp % 1 * 1000):03d}+00:00"


def configure(
    *,
    level: str,
    json_format: bool,
    context: Mapping[str, str],
    stream: TextIO | None = None,
) -> None:
    """Send all logs to `stream` (stderr), replacing an earlier call's handler."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(
        JsonFormatter(context) if json_format else TextFormatter(context)
    )
    setattr(handler, _MARK, True)
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, _MARK, False)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
