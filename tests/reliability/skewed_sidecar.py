"""`python -m sidecar`, whose wall clock a test can step as NTP or a resumed
node would, without touching this machine's clock.

    python -m tests.reliability.skewed_sidecar   (settings from WI_ variables)

The offset in seconds is read from the file named by RELIABILITY_CLOCK_FILE
whenever it changes; a missing or empty file means no offset. Monotonic time
is left alone, as a real clock step leaves it.
"""

from __future__ import annotations

import os
import runpy
import time
from pathlib import Path

from sidecar import clock


class Offset:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.stamp: tuple[int, int] | None = None
        self.seconds = 0.0

    def read(self) -> float:
        try:
            info = self.path.stat()
        except OSError:
            return 0.0
        stamp = (info.st_mtime_ns, info.st_size)
        if stamp != self.stamp:
            self.stamp = stamp
            try:
                self.seconds = float(self.path.read_text().strip() or 0)
            except (OSError, ValueError):
                self.seconds = 0.0
        return self.seconds


def main() -> None:
    offset = Offset(Path(os.environ["RELIABILITY_CLOCK_FILE"]))

    def wall(_: clock.SystemClock) -> float:
        return time.time() + offset.read()

    clock.SystemClock.wall = wall  # type: ignore[method-assign,assignment]
    runpy.run_module("sidecar", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
