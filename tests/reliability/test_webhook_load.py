"""The webhook under load, over TLS, from a process of its own: a long run
with flat memory, clients that stall or trickle, certificates replaced under
traffic, and SIGTERM in the middle of it all."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import socket
import ssl
import time
from pathlib import Path
from typing import Final

import pytest

from tests.reliability.load_runs import start_load, watch
from tests.reliability.loadgen import UID_MARK, Plan, Result
from tests.reliability.stallers import stalled_while
from tests.reliability.support import (
    MIB,
    SOAK,
    Figures,
    Processes,
    budget,
    client_context,
    fingerprint,
    scaled,
    total,
    wait_for,
)
from tests.reliability.webhook_rig import Webhook, load_mix, start_webhook
from tests.streams import close_stream
from webhook.tls import write_self_signed

SOAK_REVIEWS = scaled(15_000, 1_000_000)


@pytest.mark.timeout(budget(120, 3000))
def test_a_long_run_of_reviews_over_tls_is_all_answered_with_flat_memory(
    processes: Processes, tmp_path: Path, figures: Figures
) -> None:
    webhook = start_webhook(processes, tmp_path)
    plan = Plan(
        port=webhook.port,
        cafile=str(webhook.cafile),
        bodies=load_mix(large=True),
        requests=SOAK_REVIEWS,
        seconds=budget(100, 2700),
        connections=8,
        fresh_connections=1,
        uid_prefix="soak",
    )
    run = start_load(processes, tmp_path, plan)
    watch(run, webhook.process, every=budget(0.5, 5.0), limit=budget(110, 2800))
    result = run.result(timeout=30)

    assert result.failures == {}, result.failure_samples
    assert result.answered == SOAK_REVIEWS
    assert webhook.process.alive()
    page = webhook.metrics()
    assert (
        total(page, "workload_identity_admission_requests_total", outcome="error") == 0
    )
    assert total(page, "workload_identity_admission_requests_total") == SOAK_REVIEWS

    # Memory: from the first fifth (warmed up) to the end of the run.
    warm = next(rss for done, rss in run.rss_samples if done >= SOAK_REVIEWS // 5)
    peak = max(rss for _, rss in run.rss_samples)
    end = run.rss_samples[-1][1]
    figures.record(
        "webhook soak",
        reviews=result.answered,
        failures=sum(result.failures.values()),
        seconds=round(result.seconds, 1),
        rate_per_s=round(result.answered / result.seconds),
        p50_ms=round(result.p50_ms, 2),
        p99_ms=round(result.p99_ms, 2),
        connections=result.connections_opened,
        rss_warm_mib=round(warm / MIB, 1),
        rss_end_mib=round(end / MIB, 1),
        rss_peak_mib=round(peak / MIB, 1),
    )
    assert end - warm < 16 * MIB, f"memory grew from {warm} to {end} bytes"


# --- clients that stall or trickle ---------------------------------------------

STALLERS = scaled(200, 1000)
"""Connections held by slow or stalled clients while others are served."""


@pytest.mark.timeout(budget(120, 900))
def test_clients_that_stall_or_trickle_starve_no_one_and_are_cut_off(
    processes: Processes, tmp_path: Path, figures: Figures
) -> None:
    webhook = start_webhook(processes, tmp_path)
    victims = scaled(2_000, 20_000)

    def victim_run(prefix: str) -> Result:
        plan = Plan(
            port=webhook.port,
            cafile=str(webhook.cafile),
            bodies=load_mix(),
            requests=victims,
            seconds=budget(60, 600),
            connections=4,
            fresh_connections=1,
            uid_prefix=prefix,
        )
        return start_load(processes, tmp_path, plan).result(timeout=budget(90, 700))

    alone = victim_run("alone")
    idle_rss = webhook.process.rss()
    held = asyncio.run(
        stalled_while(
            webhook.port,
            client_context(webhook.cafile),
            lambda: victim_run("beside"),
            server=webhook.process,
            count=STALLERS,
        )
    )
    beside = held.victims

    assert alone.failures == {} and beside.failures == {}, beside.failure_samples
    assert beside.answered == victims
    by_kind = held.outcomes
    assert set(by_kind["body"]) == {"408"}, by_kind["body"]
    assert set(by_kind["trickle"]) == {"408"}, by_kind["trickle"]
    assert set(by_kind["oversized"]) == {"413"}, by_kind["oversized"]
    if SOAK:  # the idle and handshake limits are minutes long
        assert set(by_kind["headers"]) == {"closed"}, by_kind["headers"]
        assert set(by_kind["handshake"]) == {"closed"}, by_kind["handshake"]
    assert webhook.process.alive()
    after_rss = webhook.process.rss()
    figures.record(
        "stalled clients",
        stalled_connections=STALLERS,
        victim_reviews=beside.answered,
        victim_failures=sum(beside.failures.values()),
        p99_ms_alone=round(alone.p99_ms, 2),
        p99_ms_beside_stallers=round(beside.p99_ms, 2),
        rss_idle_mib=round(idle_rss / MIB, 1),
        rss_with_stallers_mib=round(held.rss_held / MIB, 1),
        rss_after_mib=round(after_rss / MIB, 1),
        kib_per_stalled_connection=round((held.rss_held - idle_rss) / STALLERS / 1024),
        cut_off={kind: sorted(set(v)) for kind, v in by_kind.items()},
    )


# --- certificate rotation under load -------------------------------------------

ROTATIONS = scaled(2, 12)


@pytest.mark.timeout(budget(150, 900))
def test_serving_certificates_replaced_under_load_fail_no_request(
    processes: Processes, tmp_path: Path, figures: Figures
) -> None:
    pairs = [_pair(tmp_path / f"pair-{n}") for n in range(ROTATIONS + 1)]
    bundle = tmp_path / "trusted.pem"
    bundle.write_text("".join(cert.read_text() for cert, _ in pairs))
    serving = tmp_path / "serving"
    serving.mkdir()
    cert, key = serving / "tls.crt", serving / "tls.key"
    shutil.copy(pairs[0][0], cert)
    shutil.copy(pairs[0][1], key)
    webhook = start_webhook(processes, tmp_path, tls=(cert, key), cafile=bundle)
    stop = tmp_path / "stop"
    run = start_load(
        processes,
        tmp_path,
        Plan(
            port=webhook.port,
            cafile=str(bundle),
            bodies=load_mix(),
            requests=10_000_000,
            seconds=budget(120, 840),
            connections=4,
            fresh_connections=2,
            uid_prefix="rotation",
            stop_file=str(stop),
        ),
    )
    wait_for(lambda: run.progress() > 500, timeout=30, what="load to start")
    context = client_context(bundle)
    for number, (next_cert, next_key) in enumerate(pairs[1:], start=1):
        before = run.progress()
        if number % 2:
            # As a tool that renames each file into place: for a moment the
            # new certificate sits beside the old key.
            _replace_by_rename(next_cert, cert)
            _replace_by_rename(next_key, key)
        else:
            # Rewritten in place, with the pair mismatched for longer than a
            # reload check (5 s) the first time.
            cert.write_bytes(next_cert.read_bytes())
            time.sleep(6.0 if number == 2 else 0.0)
            key.write_bytes(next_key.read_bytes())
        wanted = _der_fingerprint(next_cert)
        wait_for(
            lambda: _presented(webhook.port, context) == wanted,  # noqa: B023
            timeout=30,
            interval=0.2,
            what=f"rotation {number} to be served",
        )
        wait_for(
            lambda: run.progress() > before + 200,  # noqa: B023
            timeout=30,
            what="load after the rotation",
        )
    stop.touch()
    result = run.result(timeout=60)

    assert result.failures == {}, result.failure_samples
    assert {_der_fingerprint(c) for c, _ in pairs} <= set(result.certificates)
    log = webhook.process.log()
    assert log.count("serving certificate reloaded") == ROTATIONS
    assert "not loadable yet" in log  # the half-written pair was met, and kept out
    figures.record(
        "certificate rotation",
        rotations=ROTATIONS,
        reviews=result.answered,
        handshakes=result.connections_opened,
        failures=sum(result.failures.values()),
    )


def _pair(directory: Path) -> tuple[Path, Path]:
    """A self-signed pair for 127.0.0.1 whose subject no other pair shares, so
    that one bundle can trust them all."""
    directory.mkdir()
    cert, key = directory / "tls.crt", directory / "tls.key"
    write_self_signed(
        str(cert), str(key), hosts=[f"{directory.name}.test", "127.0.0.1"]
    )
    return cert, key


def _replace_by_rename(source: Path, target: Path) -> None:
    staged = target.with_name(f".{target.name}.new")
    shutil.copy(source, staged)
    os.replace(staged, target)


def _der_fingerprint(cert: Path) -> str:
    return fingerprint(ssl.PEM_cert_to_DER_cert(cert.read_text()))


def _presented(port: int, context: ssl.SSLContext) -> str:
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        return fingerprint(tls.getpeercert(binary_form=True) or b"")


# --- graceful shutdown -------------------------------------------------------

IN_FLIGHT = scaled(8, 40)
"""Requests whose body is half sent when SIGTERM arrives."""

LOST: Final = {"cut_off", "timeout", "wrong_answer", "handshake"}


@pytest.mark.timeout(budget(120, 600))
def test_sigterm_under_load_finishes_what_is_in_flight_and_refuses_the_rest(
    processes: Processes, tmp_path: Path, figures: Figures
) -> None:
    # At DEBUG the webhook logs the uid of every review it decides, so its
    # log says exactly which requests it processed.
    webhook = start_webhook(processes, tmp_path, log_level="DEBUG")
    uids_file = tmp_path / "answered"
    run = start_load(
        processes,
        tmp_path,
        Plan(
            port=webhook.port,
            cafile=str(webhook.cafile),
            bodies=load_mix(),
            requests=10_000_000,
            seconds=budget(60, 300),
            connections=8,
            fresh_connections=2,
            uid_prefix="shutdown",
            until_refused=True,
            uids_file=str(uids_file),
        ),
    )
    wait_for(
        lambda: run.progress() > scaled(2_000, 30_000),
        timeout=budget(60, 300),
        what="load before the SIGTERM",
    )
    slow = asyncio.run(
        half_sent_during_sigterm(webhook.port, client_context(webhook.cafile), webhook)
    )
    assert webhook.process.popen.wait(timeout=30) == 0
    result = run.result(timeout=60)
    after = _refused(webhook.port)

    answered = set(uids_file.read_text().split())
    processed = set(re.findall(r"admission uid=(shutdown-\d+)", webhook.process.log()))
    dropped = processed - answered
    assert not dropped, f"{len(dropped)} reviews decided but never answered"
    assert not LOST & set(result.failures), result.failure_samples
    assert not [k for k in result.failures if k.startswith("status_")]
    assert slow == ["200"] * IN_FLIGHT
    assert after == "refused"
    assert "shutting down: finishing requests in flight" in webhook.process.log()
    figures.record(
        "graceful shutdown",
        answered_before_exit=len(answered),
        in_flight_finished=slow.count("200"),
        refused_cleanly=result.failures.get("refused", 0),
        closed_unread=result.failures.get("closed_before_response", 0),
        dropped=len(dropped),
    )


async def half_sent_during_sigterm(
    port: int, context: ssl.SSLContext, webhook: Webhook
) -> list[str]:
    """Send half of each of IN_FLIGHT reviews, SIGTERM the webhook, then the
    other halves; the statuses that came back."""
    bodies = [
        load_mix()[0][0].replace(UID_MARK, f"in-flight-{n}").encode()
        for n in range(IN_FLIGHT)
    ]
    streams = [
        await asyncio.open_connection(
            "127.0.0.1", port, ssl=context, server_hostname="127.0.0.1"
        )
        for _ in bodies
    ]
    try:
        for (_, writer), body in zip(streams, bodies, strict=True):
            writer.write(
                b"POST /mutate HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                b"Content-Type: application/json\r\n"
                b"Content-Length: %d\r\n\r\n%s" % (len(body), body[: len(body) // 2])
            )
            await writer.drain()
        await asyncio.sleep(0.3)
        webhook.process.popen.send_signal(signal.SIGTERM)
        await asyncio.sleep(0.5)
        statuses = []
        for (reader, writer), body in zip(streams, bodies, strict=True):
            writer.write(body[len(body) // 2 :])
            await writer.drain()
            line = await asyncio.wait_for(reader.readline(), 30)
            statuses.append(line.split()[1].decode() if line else "closed")
        return statuses
    finally:
        for _, writer in streams:
            await close_stream(writer)


def _refused(port: int) -> str:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
    except ConnectionRefusedError:
        return "refused"
    return "accepted"
