"""The sidecar process through faults: an issuer gone, failing, talking
nonsense or slow; a token volume full or read-only; a key removed and then
replaced; a wall clock stepped forward and back.

For each: the last good token stays in the file until it expires, the fault
shows in the metrics under its reason, and the sidecar recovers by itself,
without a restart. The unit tests in tests/sidecar cover the same logic on
virtual time; these run the real process against real files and a real TLS
issuer.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import jwt
import pytest

from oidc_tokens.keys import generate_rsa_key, jwks, private_key_pem
from tests.log_scan import secrets_in
from tests.reliability.faulty_issuer import FaultyIssuer, server_context
from tests.reliability.sidecar_rig import (
    Sidecar,
    claims,
    fake_sa_token,
    start_sidecar,
)
from tests.reliability.support import Figures, Processes, budget, wait_for
from tests.reliability.volumes import TokenVolume
from webhook.tls import write_self_signed

ISSUER_URL = "https://issuer.reliability.test"
LIFETIME = 3
"""Seconds an issuer token lives: the faults outlast it quickly."""


@dataclass
class Rig:
    issuer: FaultyIssuer
    ca_file: Path
    sa_token: str
    directory: Path
    processes: Processes

    def sidecar(self, token_dir: Path, **settings: str) -> Sidecar:
        sa_file = self.directory / "sa-token"
        sa_file.write_text(self.sa_token)
        sidecar = start_sidecar(
            self.processes,
            self.directory,
            token_dir,
            mode="issuer",
            issuer_token_url=self.issuer.token_url,
            issuer_ca_file=str(self.ca_file),
            sa_token_file=str(sa_file),
            **settings,
        )
        sidecar.process.forbidden.append(self.sa_token)
        return sidecar


@pytest.fixture
def rig(tmp_path: Path, processes: Processes) -> Iterator[Rig]:
    cert, key = tmp_path / "issuer.crt", tmp_path / "issuer.key"
    write_self_signed(str(cert), str(key), hosts=["127.0.0.1"])
    issuer = FaultyIssuer(
        key=generate_rsa_key(),
        issuer_url=ISSUER_URL,
        tls=server_context(cert, key),
        lifetime=LIFETIME,
    )
    issuer.start()
    try:
        yield Rig(issuer, cert, fake_sa_token(), tmp_path, processes)
    finally:
        issuer.stop()


@pytest.fixture
def volume(tmp_path: Path) -> Iterator[TokenVolume]:
    mounted = TokenVolume(tmp_path / "token-volume")
    try:
        yield mounted
    finally:
        mounted.close()


def ride_out(
    sidecar: Sidecar,
    *,
    reason: str,
    fault: Callable[[], None],
    repair: Callable[[], None],
    figures: Figures,
    name: str,
) -> None:
    """Start `fault`, and check that: it shows in the metrics under `reason`;
    the last good token stays in the file, whole, until it expires and after;
    once `repair`ed, a fresh token comes without a restart."""
    before = sidecar.failures(reason)
    fault()
    wait_for(
        lambda: sidecar.failures(reason) > before,
        timeout=budget(30, 60),
        what=f"a {reason} failure in the metrics",
    )
    # A refresh that was under way when the fault began may still land.
    time.sleep(0.5)
    kept = sidecar.token()
    expires = claims(kept)["exp"]
    observed = 0
    while time.time() < expires + 1.5:
        assert sidecar.token() == kept, "the token file changed during the fault"
        observed += 1
        time.sleep(0.1)
    assert sidecar.valid() == 0  # the gauge says what the file holds now
    assert sidecar.status("healthz") == 503
    assert sidecar.token() == kept  # expired, and still never emptied

    repaired = time.monotonic()
    repair()
    fresh = sidecar.fresh_token(after=kept)
    recovery = time.monotonic() - repaired
    wait_for(lambda: sidecar.valid() == 1, timeout=10, what="token_valid back at 1")
    assert sidecar.status("healthz") == 200
    assert claims(fresh)["exp"] > time.time()
    assert sidecar.process.alive()
    assert not secrets_in(sidecar.page(), [kept, fresh])  # metrics: no token
    figures.record(
        "sidecar faults",
        **{
            f"{name}_failures": int(sidecar.failures(reason) - before),
            f"{name}_recovery_s": round(recovery, 1),
        },
    )
    figures.add("sidecar faults", "faults_survived", 1)


def test_an_issuer_that_is_gone_costs_nothing_until_the_token_expires_and_then_comes_back(
    rig: Rig, tmp_path: Path, figures: Figures
) -> None:
    sidecar = rig.sidecar(tmp_path / "tokens")
    ride_out(
        sidecar,
        reason="issuer_unreachable",
        fault=rig.issuer.down,
        repair=rig.issuer.up,
        figures=figures,
        name="issuer_gone",
    )


@pytest.mark.parametrize(
    ("mode", "reason"),
    [
        ("error", "issuer_unreachable"),
        ("refuse", "issuer_refused"),
        ("garbage", "issuer_refused"),
        ("nested", "issuer_unreachable"),
    ],
)
def test_an_issuer_answering_errors_or_nonsense_is_ridden_out(
    rig: Rig, tmp_path: Path, figures: Figures, mode: str, reason: str
) -> None:
    sidecar = rig.sidecar(tmp_path / "tokens")

    def fault() -> None:
        rig.issuer.set_mode(mode)

    def repair() -> None:
        rig.issuer.set_mode("sign")

    ride_out(
        sidecar,
        reason=reason,
        fault=fault,
        repair=repair,
        figures=figures,
        name=f"issuer_{mode}",
    )
    assert rig.issuer.seen[mode] >= 2


def test_an_issuer_slower_than_the_request_timeout_is_ridden_out(
    rig: Rig, tmp_path: Path, figures: Figures
) -> None:
    sidecar = rig.sidecar(tmp_path / "tokens")
    rig.issuer.delay = 12.0  # the sidecar gives a request 10 s

    def fault() -> None:
        rig.issuer.set_mode("slow")

    def repair() -> None:
        rig.issuer.set_mode("sign")

    ride_out(
        sidecar,
        reason="issuer_unreachable",
        fault=fault,
        repair=repair,
        figures=figures,
        name="issuer_slow",
    )
    assert sidecar.metric(
        "token_fetch_duration_seconds_count", mode="issuer"
    ) > sidecar.metric("token_fetch_duration_seconds_bucket", mode="issuer", le="5.0")


def test_a_full_token_volume_keeps_the_token_and_is_written_again_once_there_is_room(
    rig: Rig, volume: TokenVolume, figures: Figures
) -> None:
    sidecar = rig.sidecar(volume.path)
    volume.pid = sidecar.process.pid
    ride_out(
        sidecar,
        reason="write_failed",
        fault=volume.fill,
        repair=volume.drain,
        figures=figures,
        name="volume_full",
    )
    assert not [p for p in volume.path.iterdir() if p.name.endswith(".tmp")]
    figures.record("sidecar faults", volume_mechanism=volume.mechanism)


def test_a_read_only_token_volume_keeps_the_token_and_is_written_again_once_writable(
    rig: Rig, volume: TokenVolume, figures: Figures
) -> None:
    if not volume.can_be_read_only():
        pytest.skip("root without the right to mount: no way to make a read-only dir")
    sidecar = rig.sidecar(volume.path)
    ride_out(
        sidecar,
        reason="write_failed",
        fault=volume.read_only,
        repair=volume.writable,
        figures=figures,
        name="volume_read_only",
    )


def test_a_key_file_removed_then_replaced_by_another_key_is_ridden_out(
    processes: Processes, tmp_path: Path, figures: Figures
) -> None:
    first, second = generate_rsa_key(), generate_rsa_key()
    key_file = tmp_path / "signing" / "key.pem"
    key_file.parent.mkdir()
    key_file.write_bytes(private_key_pem(first))
    sidecar = start_sidecar(
        processes,
        tmp_path,
        tmp_path / "tokens",
        mode="key",
        issuer=ISSUER_URL,
        key_file=str(key_file),
        aws_expiration_seconds="10",
        project="payments",
        namespace="payments",
        pod_name="app-1",
        service_account="reports",
    )
    for key in (first, second):
        sidecar.process.forbidden.append(private_key_pem(key).decode().splitlines()[1])

    def replace() -> None:
        staged = key_file.with_suffix(".new")
        staged.write_bytes(private_key_pem(second))
        staged.replace(key_file)

    ride_out(
        sidecar,
        reason="signing",
        fault=key_file.unlink,
        repair=replace,
        figures=figures,
        name="key_removed",
    )
    token = sidecar.token()
    (published,) = jwks([second.public_key()])["keys"]
    assert jwt.get_unverified_header(token)["kid"] == published["kid"]
    jwt.decode(
        token,
        jwt.PyJWK(published),
        algorithms=["RS256"],
        audience="sts.amazonaws.com",
        issuer=ISSUER_URL,
    )


def test_a_wall_clock_stepped_forward_and_back_is_ridden_out(
    rig: Rig, tmp_path: Path, figures: Figures
) -> None:
    sidecar = rig.sidecar(tmp_path / "tokens")

    # Two hours ahead, every token the issuer signs looks expired on arrival:
    # the sidecar refuses them, and the file keeps what it has.
    ride_out(
        sidecar,
        reason="issuer_refused",
        fault=lambda: sidecar.step_clock(7200),
        repair=lambda: sidecar.step_clock(0),
        figures=figures,
        name="clock_forward_2h",
    )

    # Two hours behind, the deadlines set before the step are meaningless:
    # the sidecar refreshes at once; stepped back again, the deadline it set
    # on the slow clock has long passed, and it refreshes at once again.
    refused = sidecar.failures("issuer_refused")
    current = sidecar.token()
    sidecar.step_clock(-7200)
    later = sidecar.fresh_token(after=current, timeout=10)
    sidecar.step_clock(0)
    sidecar.fresh_token(after=later, timeout=10)
    assert sidecar.failures("issuer_refused") == refused
    assert sidecar.valid() == 1
    figures.add("sidecar faults", "faults_survived", 1)
