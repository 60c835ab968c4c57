"""Logging setup shared by the webhook's commands: text or one JSON object a line."""

from __future__ import annotations

import json
import logging
import sys
from typing import Final


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        body = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S%z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            body["exception"] = self.formatException(record.exc_info)
        return json.dumps(body)


PRODUCT_LOGGERS: Final = ("webhook", "oidc_tokens")


def product_debug_only(record: logging.LogRecord) -> bool:
    """Debug lines of the product's own loggers only.

    Libraries log whole requests at DEBUG: botocore the X-Amz-Security-Token
    header, kubernetes-asyncio the bodies of TokenReviews. `--log-level DEBUG`
    is for following the product, so their debug lines are never written.
    """
    return (
        record.levelno >= logging.INFO
        or record.name.partition(".")[0] in PRODUCT_LOGGERS
    )


def configure(level: str = "INFO", fmt: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(product_debug_only)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
        )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # aiohttp logs every client disconnect at DEBUG/INFO, and botocore says at
    # INFO where it found credentials on every run; keep ours readable.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    logging.getLogger("botocore.credentials").setLevel(logging.WARNING)
