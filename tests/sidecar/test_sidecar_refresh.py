"""The refresh loop on virtual time: deadlines, clock jumps, failures, metrics."""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable
from pathlib import Path

import pytest

from oidc_tokens.claims import CLOCK_SKEW_SECONDS, unverified_claims
from sidecar import schedule
from sidecar.config import Config
from tests.sidecar.sidecar_helpers import (
    GCP_AUDIENCE,
    FakeClock,
    Harness,
    SwitchableSource,
    break_key,
    file_claims,
    key_source,
    restore_key,
    run_loop_until,
    signed_token,
)

MakeHarness = Callable[..., Harness]


async def test_the_first_tick_writes_the_token_file(
    make_config: Callable[..., Config], make_harness: MakeHarness
) -> None:
    harness = make_harness(make_config())
    await harness.tick()
    claims = file_claims(harness.config.token_dir / "aws-token")
    assert claims["iat"] == harness.clock.now - 1 - CLOCK_SKEW_SECONDS
    assert claims["exp"] == harness.clock.now - 1 + 3600
    assert harness.attempts("aws") == 1


async def test_the_token_is_refreshed_at_80_percent_of_its_lifetime(
    make_config: Callable[..., Config], make_harness: MakeHarness
) -> None:
    harness = make_harness(make_config())
    path = harness.config.token_dir / "aws-token"
    await harness.tick()
    first = file_claims(path)
    deadline = first["iat"] + 0.8 * (first["exp"] - first["iat"])

    await run_loop_until(harness, deadline - 1)
    assert file_claims(path) == first
    await run_loop_until(harness, deadline + 1)
    second = file_claims(path)
    assert second["jti"] != first["jti"]
    assert deadline <= second["iat"] + CLOCK_SKEW_SECONDS <= deadline + 1
    assert harness.attempts("aws") == 2


async def test_jitter_makes_the_refresh_earlier_but_not_before_70_percent(
    make_config: Callable[..., Config], make_harness: MakeHarness
) -> None:
    harness = make_harness(make_config(), jitter=0.999)
    await harness.tick()
    state = harness.state()
    assert state.token is not None
    span = state.token.lifetime
    assert (
        state.token.issued_at + 0.7 * span
        <= state.next_attempt
        < state.token.issued_at + 0.8 * span
    )


async def test_a_clock_stepped_back_before_iat_refreshes_at_once(
    make_config: Callable[..., Config], make_harness: MakeHarness
) -> None:
    harness = make_harness(make_config())
    path = harness.config.token_dir / "aws-token"
    harness.clock.jump_wall(600)  # the node's clock runs 10 minutes fast
    await harness.tick()
    fast = file_claims(path)
    harness.clock.jump_wall(-600)  # NTP corrects it
    assert harness.clock.now < fast["iat"]
    await harness.tick()
    corrected = file_claims(path)
    assert corrected["iat"] == harness.clock.now - 1 - CLOCK_SKEW_SECONDS
    assert corrected["iat"] <= harness.clock.now


async def test_a_forward_jump_of_two_hours_refreshes_within_one_tick(
    make_config: Callable[..., Config], make_harness: MakeHarness
) -> None:
    harness = make_harness(make_config())
    path = harness.config.token_dir / "aws-token"
    await harness.tick()
    harness.clock.jump_wall(7200)  # suspended, then resumed
    assert file_claims(path)["exp"] <= harness.clock.now
    resumed_at = harness.clock.now
    await run_loop_until(harness, resumed_at + harness.config.tick_seconds)
    assert file_claims(path)["exp"] > harness.clock.now
    assert file_claims(path)["iat"] + CLOCK_SKEW_SECONDS - resumed_at <= 1


async def test_the_loop_checks_deadlines_every_tick_and_records_progress(
    make_config: Callable[..., Config], make_harness: MakeHarness
) -> None:
    harness = make_harness(make_config(tick_seconds="0.5"))
    before = harness.refresher.last_progress
    await run_loop_until(harness, harness.clock.now + 3)
    assert set(harness.clock.sleeps) == {0.5}
    assert harness.refresher.last_progress > before


async def test_a_signing_failure_keeps_the_old_token_and_counts_the_reason(
    make_config: Callable[..., Config],
    make_harness: MakeHarness,
    key_file: Path,
    rsa_pem: bytes,
) -> None:
    harness = make_harness(make_config())
    path = harness.config.token_dir / "aws-token"
    await harness.tick()
    good = path.read_bytes()
    state = harness.state()

    break_key(key_file)
    harness.clock.now = state.next_attempt
    await harness.tick()
    assert path.read_bytes() == good
    assert harness.failures("aws", "signing") == 1
    assert state.last_error is not None and state.last_error.reason == "signing"
    assert (
        harness.sample("token_expiry_timestamp_seconds", provider="aws")
        == file_claims(path)["exp"]
    )
    assert harness.sample("token_valid", provider="aws") == 1

    restore_key(key_file, rsa_pem)
    harness.clock.now = state.next_attempt
    await harness.tick()
    assert path.read_bytes() != good
    assert state.failures == 0


async def test_retries_back_off_within_10_percent_of_the_lifetime_and_reset_after_success(
    make_config: Callable[..., Config], make_harness: MakeHarness
) -> None:
    config = make_config(aws_expiration_seconds="600")
    source = SwitchableSource(key_source(config))
    harness = make_harness(config, source=source, jitter=0.999)
    await harness.tick()
    state = harness.state()
    assert state.token is not None
    lifetime = state.token.lifetime

    source.failing = True
    harness.clock.now = state.next_attempt
    start = len(source.fetched_at)
    await run_loop_until(harness, state.token.expires_at + 60)
    attempts = source.fetched_at[start:]
    gaps = [b - a for a, b in itertools.pairwise(attempts)]
    assert len(attempts) > 5
    assert max(gaps) <= 0.1 * lifetime + harness.config.tick_seconds
    assert gaps[:4] == sorted(gaps[:4])  # growing at first
    assert harness.failures("aws", "signing") == len(attempts)

    source.failing = False
    await run_loop_until(harness, harness.clock.now + 0.1 * lifetime + 1)
    assert state.failures == 0
    source.failing = True
    harness.clock.now = state.next_attempt
    await harness.tick(0)
    assert state.next_attempt - harness.clock.now <= 1.0  # back to the first step


async def test_the_expiry_gauge_always_equals_exp_of_the_token_in_the_file(
    make_config: Callable[..., Config], make_harness: MakeHarness
) -> None:
    config = make_config(aws_expiration_seconds="60")
    source = SwitchableSource(key_source(config))
    harness = make_harness(config, source=source)
    path = config.token_dir / "aws-token"
    for second in range(300):
        source.failing = 100 <= second < 140
        await harness.tick()
        gauge = harness.sample("token_expiry_timestamp_seconds", provider="aws")
        assert gauge == file_claims(path)["exp"]


async def test_a_60_second_token_scenario_with_a_30_second_signer_outage(
    make_config: Callable[..., Config], make_harness: MakeHarness
) -> None:
    """case-24 on virtual time: 180 s of 60 s tokens, the signer down at 70-100 s."""
    config = make_config(aws_expiration_seconds="60")
    source = SwitchableSource(key_source(config))
    harness = make_harness(config, source=source, jitter=0.5)
    path = config.token_dir / "aws-token"
    start = harness.clock.now
    successes = 0
    last_success = 0.0
    mtime = 0
    outage_attempts = []
    recovered_at = None
    while harness.clock.now < start + 180:
        elapsed = harness.clock.now - start
        source.failing = 70 <= elapsed < 100
        before = harness.failures("aws", "signing")
        await harness.refresher.refresh_due()
        if harness.failures("aws", "signing") > before:
            outage_attempts.append(elapsed)
        now = harness.clock.now
        claims = file_claims(path)  # never missing or empty
        if path.stat().st_mtime_ns != mtime:
            mtime = path.stat().st_mtime_ns
            successes += 1
            success_time = harness.sample(
                "last_success_timestamp_seconds", provider="aws"
            )
            assert success_time is not None and success_time > last_success
            last_success = success_time
            if elapsed >= 100 and recovered_at is None:
                recovered_at = elapsed
        if elapsed < 70 or (recovered_at is not None and elapsed >= recovered_at):
            # a reader never sees a token with less than 20% of 60 s (less 1 s) left
            assert claims["exp"] - now >= 0.2 * 60 - 1
        valid = harness.sample("token_valid", provider="aws")
        assert valid == (1 if claims["exp"] > now else 0)
        harness.clock.advance(0.25)

    assert recovered_at is not None
    assert recovered_at - 100 <= 0.1 * 60 + 0.25
    failures = harness.failures("aws", "signing")
    assert failures == len(outage_attempts) > 0
    assert harness.attempts("aws") == successes + failures
    gaps = [b - a for a, b in itertools.pairwise(outage_attempts)]
    assert max(gaps) <= 0.1 * 60 + 0.25


async def test_a_write_failure_for_one_provider_does_not_stop_the_other(
    make_config: Callable[..., Config], make_harness: MakeHarness
) -> None:
    config = make_config(gcp_identity="bq-reader", gcp_audience=GCP_AUDIENCE)
    (config.token_dir / "aws-token").mkdir()  # rename over a directory fails
    harness = make_harness(config)
    await harness.tick()
    assert harness.failures("aws", "write_failed") == 1
    assert harness.state("aws").last_error is not None
    assert unverified_claims((config.token_dir / "gcp-token").read_text())
    assert harness.failures("gcp", "write_failed") == 0
    assert harness.sample("token_valid", provider="gcp") == 1
    assert harness.sample("token_valid", provider="aws") == 0
    assert not list(config.token_dir.glob(".aws-token.*"))


async def test_a_gcp_identity_gets_its_token_and_credential_configuration(
    make_config: Callable[..., Config], make_harness: MakeHarness
) -> None:
    config = make_config(
        aws_identity="",
        gcp_identity="bq-reader",
        gcp_audience=GCP_AUDIENCE,
        file_mode="0640",
    )
    harness = make_harness(config)
    await harness.tick()
    token_dir = config.token_dir
    assert sorted(p.name for p in token_dir.iterdir()) == [
        "gcp-credentials.json",
        "gcp-token",
    ]
    assert (
        unverified_claims((token_dir / "gcp-token").read_text())["aud"] == GCP_AUDIENCE
    )
    for path in token_dir.iterdir():
        assert path.stat().st_mode & 0o777 == 0o640


async def test_a_token_left_by_an_earlier_run_is_reported_then_replaced(
    make_config: Callable[..., Config],
    make_harness: MakeHarness,
    rsa_pem: bytes,
    clock: FakeClock,
) -> None:
    config = make_config()
    path = config.token_dir / "aws-token"
    earlier = signed_token(rsa_pem, now=clock.now - 600, lifetime=3600)
    path.write_text(earlier)
    harness = make_harness(config)
    harness.refresher.adopt_files_on_disk()
    assert (
        harness.sample("token_expiry_timestamp_seconds", provider="aws")
        == (file_claims(path)["exp"])
    )
    assert harness.sample("token_valid", provider="aws") == 1
    await harness.tick()
    assert path.read_text() != earlier


async def test_oneshot_writes_every_provider_once(
    make_config: Callable[..., Config], make_harness: MakeHarness
) -> None:
    config = make_config(gcp_identity="bq-reader", gcp_audience=GCP_AUDIENCE)
    harness = make_harness(config)
    assert await harness.refresher.first_tokens() == []
    assert harness.attempts("aws") == harness.attempts("gcp") == 1


async def test_oneshot_gives_up_after_a_few_quick_attempts(
    make_config: Callable[..., Config], make_harness: MakeHarness, key_file: Path
) -> None:
    break_key(key_file)
    harness = make_harness(make_config())
    started = harness.clock.now
    (failed,) = await harness.refresher.first_tokens(attempts=5)
    assert failed.provider == "aws"
    assert harness.failures("aws", "signing") == 5
    assert harness.clock.now - started <= 5 * schedule.URGENT_RETRY_CAP_SECONDS


async def test_no_token_key_or_claim_value_reaches_the_logs(
    make_config: Callable[..., Config],
    make_harness: MakeHarness,
    key_file: Path,
    rsa_pem: bytes,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    config = make_config(
        gcp_identity="bq-reader", gcp_audience=GCP_AUDIENCE, aws_expiration_seconds="60"
    )
    harness = make_harness(config)
    written: list[str] = []
    for second in range(200):
        if second == 50:
            break_key(key_file)
        if second == 130:
            restore_key(key_file, rsa_pem)
        await harness.tick()
        written.append((config.token_dir / "aws-token").read_text())
    assert len(set(written)) > 3
    logged = caplog.text + "".join(repr(r.args) for r in caplog.records)
    assert "WARNING" in caplog.text and "INFO" in caplog.text
    forbidden = [*set(written), "eyJ", "PRIVATE KEY", rsa_pem.decode().splitlines()[1]]
    for claim in file_claims(config.token_dir / "aws-token").values():
        if isinstance(claim, str) and len(claim) > 20:
            forbidden.append(claim)  # jti and sub
    for secret in forbidden:
        assert secret not in logged
