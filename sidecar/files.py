"""Writing into the token volume so that no reader sees a partial file.

Every file is written to a temporary file in the same directory (so the rename
stays on one file system), flushed, given its mode and renamed over the
target. rename(2) replaces the name in one step: a reader that opens the path
gets either the old file or the new one, never a missing, empty or half-written
one, and a reader that has the old file open keeps reading the old content.
"""

from __future__ import annotations

import errno
import logging
import os
from contextlib import suppress
from pathlib import Path
from typing import Final

log = logging.getLogger(__name__)

_TEMP_SUFFIX: Final = ".tmp"


class TokenDirError(OSError):
    """The token directory cannot be written."""


def write_atomically(path: Path, data: bytes, *, mode: int) -> None:
    """Replace `path` with `data`, readable under `mode`, in one rename."""
    fd, temp_path = _create_temp(path.parent, _temp_prefix(path.name))
    try:
        with os.fdopen(fd, "wb") as temp:
            temp.write(data)
            temp.flush()
            os.fsync(temp.fileno())
            # Created 0600; the apps run as other users and must read.
            os.fchmod(temp.fileno(), mode)
        os.replace(temp_path, path)
    except BaseException:
        with suppress(OSError):
            temp_path.unlink()
        raise


def ensure_writable_dir(directory: Path) -> None:
    """Create `directory` if needed and prove that files can be made in it."""
    hint = (
        "mount the token volume read-write into the sidecar container, or point "
        "--token-dir / WI_TOKEN_DIR at a writable directory"
    )
    try:
        # Others may read and list, never add or replace (whatever the umask).
        directory.mkdir(mode=0o755, parents=True, exist_ok=True)
        fd, probe = _create_temp(directory, ".probe.")
        os.close(fd)
        probe.unlink()
    except OSError as exc:
        raise TokenDirError(
            f"token directory {directory} is not writable by uid {os.getuid()} "
            f"({exc.strerror or exc}): {hint}"
        ) from exc


def remove_stale_temp_files(directory: Path, names: list[str]) -> int:
    """Delete temporary files that a killed sidecar left behind; return how many."""
    removed = 0
    for name in names:
        for stale in directory.glob(f"{_temp_prefix(name)}*{_TEMP_SUFFIX}"):
            with suppress(FileNotFoundError):
                stale.unlink()
                removed += 1
    if removed:
        log.info("removed %d temporary files left by an earlier run", removed)
    return removed


def read_text(path: Path) -> str | None:
    """The file's content, or None when it is missing or unreadable."""
    try:
        return path.read_text()
    except (OSError, UnicodeDecodeError):
        return None


def _create_temp(directory: Path, prefix: str) -> tuple[int, Path]:
    """A new empty file only this user can read, opened for writing.

    What tempfile.mkstemp does; tempfile itself would load shutil, and with it
    the bz2 and lzma libraries, into every pod.
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW
    for _ in range(100):
        path = directory / f"{prefix}{os.urandom(6).hex()}{_TEMP_SUFFIX}"
        try:
            return os.open(path, flags, 0o600), path
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "no unused temporary file name", directory)


def _temp_prefix(name: str) -> str:
    # Hidden, and never matching the names the SDKs read.
    return f".{name}."
