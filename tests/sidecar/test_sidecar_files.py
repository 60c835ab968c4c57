"""Atomic writes into the token volume: readers never see a partial file."""

from __future__ import annotations

import errno
import json
import os
import stat
import threading
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import jwt
import pytest

from oidc_tokens.keys import jwks, load_public_key
from sidecar import files
from sidecar.config import Config, validate
from tests.sidecar.sidecar_helpers import GCP_AUDIENCE, Harness, key_mode_settings

WRITES = 1_500


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_written_file_has_the_content_and_the_configured_mode(tmp_path: Path) -> None:
    target = tmp_path / "aws-token"
    old_umask = os.umask(0o077)
    try:
        files.write_atomically(target, b"first", mode=0o644)
    finally:
        os.umask(old_umask)
    assert target.read_bytes() == b"first"
    assert mode_of(target) == 0o644


def test_the_mode_is_applied_again_on_every_write(tmp_path: Path) -> None:
    target = tmp_path / "aws-token"
    files.write_atomically(target, b"first", mode=0o640)
    target.chmod(0o600)
    files.write_atomically(target, b"second", mode=0o640)
    assert mode_of(target) == 0o640
    assert target.read_bytes() == b"second"


def test_no_temporary_file_is_left_after_writes(tmp_path: Path) -> None:
    target = tmp_path / "gcp-token"
    for n in range(5):
        files.write_atomically(target, f"token {n}".encode(), mode=0o644)
    assert [p.name for p in tmp_path.iterdir()] == ["gcp-token"]


def test_a_reader_holding_the_old_file_keeps_reading_the_old_content(
    tmp_path: Path,
) -> None:
    target = tmp_path / "aws-token"
    files.write_atomically(target, b"old token", mode=0o644)
    with target.open("rb") as reader:
        files.write_atomically(target, b"new token", mode=0o644)
        assert reader.read() == b"old token"
    assert target.read_bytes() == b"new token"


def test_a_failed_write_keeps_the_old_file_and_cleans_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "aws-token"
    files.write_atomically(target, b"good token", mode=0o644)

    def full_disk(*args: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full_disk)
    with pytest.raises(OSError, match="No space left"):
        files.write_atomically(target, b"new token", mode=0o644)
    assert target.read_bytes() == b"good token"
    assert [p.name for p in tmp_path.iterdir()] == ["aws-token"]


def test_the_token_dir_is_created_when_missing(tmp_path: Path) -> None:
    directory = tmp_path / "run" / "tokens"
    files.ensure_writable_dir(directory)
    assert directory.is_dir()
    assert list(directory.iterdir()) == []


def test_an_unwritable_token_dir_fails_with_what_to_do(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    with pytest.raises(files.TokenDirError) as caught:
        files.ensure_writable_dir(blocker / "tokens")
    message = str(caught.value)
    assert "is not writable" in message
    assert "--token-dir / WI_TOKEN_DIR" in message
    assert "read-write" in message


def test_temporary_files_of_a_killed_run_are_removed(tmp_path: Path) -> None:
    (tmp_path / ".aws-token.x1y2z3.tmp").write_text("half")
    (tmp_path / ".gcp-credentials.json.abc.tmp").write_text("{")
    (tmp_path / "aws-token").write_text("keep")
    (tmp_path / "unrelated.tmp").write_text("keep")
    removed = files.remove_stale_temp_files(
        tmp_path, ["aws-token", "gcp-token", "gcp-credentials.json"]
    )
    assert removed == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["aws-token", "unrelated.tmp"]


class PollingReader(threading.Thread):
    """Opens, reads and closes `paths` in a tight loop, as the SDKs do."""

    def __init__(self, paths: list[Path]) -> None:
        super().__init__(daemon=True)
        self.paths = paths
        self.stop = threading.Event()
        self.seen: dict[Path, Counter[bytes]] = {p: Counter() for p in paths}
        self.missing = 0
        self.empty = 0
        self.reads = 0

    def run(self) -> None:
        while not self.stop.is_set():
            for path in self.paths:
                try:
                    with path.open("rb") as file:
                        data = file.read()
                except FileNotFoundError:
                    self.missing += 1
                    continue
                self.reads += 1
                if not data:
                    self.empty += 1
                self.seen[path][data] += 1


def test_a_polling_reader_never_sees_a_missing_empty_or_torn_file(
    shm_dir: Path,
) -> None:
    target = shm_dir / "aws-token"

    def token(n: int) -> bytes:
        # Different lengths, so a mix of two tokens would not look like either.
        return f"header.{'p' * (200 + n % 97)}{n}.signature".encode()

    written = [token(0)]
    files.write_atomically(target, written[0], mode=0o644)
    reader = PollingReader([target])
    reader.start()
    try:
        # At least WRITES rewrites, and on until the reader has caught many of
        # them (a busy machine may schedule the reader thread rarely).
        while len(written) <= WRITES or (
            len(reader.seen[target]) < 20 and len(written) < 50 * WRITES
        ):
            written.append(token(len(written)))
            files.write_atomically(target, written[-1], mode=0o644)
    finally:
        reader.stop.set()
        reader.join()
    assert len(reader.seen[target]) >= 20
    assert reader.missing == 0
    assert reader.empty == 0
    assert set(reader.seen[target]) <= set(written)


async def test_a_reader_during_many_refreshes_only_ever_sees_whole_valid_tokens(
    shm_dir: Path,
    key_file: Path,
    rsa_pem: bytes,
    make_harness: Callable[..., Harness],
) -> None:
    config: Config = validate(
        key_mode_settings(
            shm_dir, key_file, gcp_identity="bq-reader", gcp_audience=GCP_AUDIENCE
        )
    )
    harness = make_harness(config)
    aws, gcp = harness.refresher.states
    written: set[bytes] = set()
    for state in (aws, gcp):
        assert await harness.refresher.refresh(state)
        assert state.token is not None
        written.add(state.token.value.encode())
    credentials = shm_dir / "gcp-credentials.json"
    reader = PollingReader([aws.config.token_path, gcp.config.token_path, credentials])
    reader.start()
    try:
        for _ in range(WRITES // 2):
            harness.clock.advance(1)
            for state in (aws, gcp):
                assert await harness.refresher.refresh(state)
                assert state.token is not None
                written.add(state.token.value.encode())
    finally:
        reader.stop.set()
        reader.join()

    assert (reader.missing, reader.empty) == (0, 0)
    published = jwks([load_public_key(rsa_pem)])["keys"]
    for path in (aws.config.token_path, gcp.config.token_path):
        seen = set(reader.seen[path])
        assert len(seen) > 1
        assert seen <= written, "a read returned bytes that were never written"
        for token in seen:
            assert token.count(b".") == 2
            kid = jwt.get_unverified_header(token)["kid"]
            (jwk,) = [k for k in published if k["kid"] == kid]
            jwt.decode(
                token,
                jwt.PyJWK(jwk),
                algorithms=["RS256"],
                options={
                    "verify_aud": False,
                    "verify_exp": False,
                    "verify_iat": False,
                    "verify_nbf": False,
                },
            )
    for document in reader.seen[credentials]:
        assert json.loads(document)["type"] == "external_account"
