"""The pod's token volume as a tiny file system of its own, so that it can be
filled up and made read-only without going near a real disk.

With the right to mount (root with CAP_SYS_ADMIN, as in CI containers) it is
a 256 KiB tmpfs: "full" fills it with a filler file, "read-only" remounts it
read-only. Without, "full" lowers the sidecar process's file size limit to 0
(RLIMIT_FSIZE, so every write fails with EFBIG) and "read-only" takes the
write bit off the directory, which binds everyone but root.
"""

from __future__ import annotations

import contextlib
import errno
import os
import resource
import shutil
import signal
import subprocess
from pathlib import Path
from typing import Final

SIZE: Final = "256k"


def ignore_file_size_signal() -> None:
    """For the sidecar process: a write past RLIMIT_FSIZE fails with EFBIG
    instead of killing the process with SIGXFSZ."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)


def _mount(*args: str) -> bool:
    if shutil.which("mount") is None:
        return False
    done = subprocess.run(
        ["mount", *args], capture_output=True, timeout=10, check=False
    )
    return done.returncode == 0


class TokenVolume:
    def __init__(self, path: Path) -> None:
        self.path = path
        path.mkdir(parents=True, exist_ok=True)
        self.mounted = os.geteuid() == 0 and _mount(
            "-t", "tmpfs", "-o", f"size={SIZE},mode=0755", "tmpfs", str(path)
        )
        self.filler = path / ".filler"
        self.pid: int | None = None
        """The sidecar process, for the file size limit without tmpfs."""

    @property
    def mechanism(self) -> str:
        return f"tmpfs of {SIZE}" if self.mounted else "RLIMIT_FSIZE and chmod"

    def can_be_read_only(self) -> bool:
        return self.mounted or os.geteuid() != 0

    def fill(self) -> None:
        if not self.mounted:
            assert self.pid is not None, "set the sidecar's pid first"
            resource.prlimit(
                self.pid, resource.RLIMIT_FSIZE, (0, resource.RLIM_INFINITY)
            )
            return
        block = b"\0" * 4096
        descriptor = os.open(self.filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        try:
            for _ in range(1024):  # at most 4 MiB; the volume is far smaller
                try:
                    os.write(descriptor, block)
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
                    break
        finally:
            os.close(descriptor)

    def drain(self) -> None:
        if not self.mounted:
            assert self.pid is not None
            resource.prlimit(
                self.pid,
                resource.RLIMIT_FSIZE,
                (resource.RLIM_INFINITY, resource.RLIM_INFINITY),
            )
            return
        self.filler.unlink(missing_ok=True)

    def read_only(self) -> None:
        if self.mounted:
            assert _mount("-o", "remount,ro", str(self.path)), "cannot remount ro"
        else:
            self.path.chmod(0o555)

    def writable(self) -> None:
        if self.mounted:
            assert _mount("-o", "remount,rw", str(self.path)), "cannot remount rw"
        else:
            self.path.chmod(0o755)

    def close(self) -> None:
        if self.mounted:
            with contextlib.suppress(OSError, subprocess.SubprocessError):
                done = subprocess.run(
                    ["umount", str(self.path)], capture_output=True, timeout=10
                )
                if done.returncode != 0:
                    subprocess.run(
                        ["umount", "-l", str(self.path)],
                        capture_output=True,
                        timeout=10,
                    )
            self.mounted = False
        else:
            with contextlib.suppress(OSError):
                self.path.chmod(0o755)
