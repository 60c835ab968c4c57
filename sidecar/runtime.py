"""Wire the parts together and run them: once (`--oneshot`) or until SIGTERM."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Final

from sidecar import files
from sidecar.clock import Clock, SystemClock
from sidecar.config import Config, IssuerMode, KeyMode
from sidecar.metrics import SidecarMetrics
from sidecar.prometheus import CollectorRegistry
from sidecar.refresh import Refresher
from sidecar.server import ListenError, Probes, ProbeSettings, serve_probes
from sidecar.signer import KeyFileSigner, KeySource
from sidecar.tokens import FETCH_TIMEOUT_SECONDS, TokenSource

log = logging.getLogger(__name__)

STALL_GRACE_SECONDS: Final = 5.0


class StartupError(Exception):
    """Something the sidecar needs at start is missing; the message says what."""


def stall_after_seconds(tick_seconds: float) -> float:
    """Liveness fails after three missed ticks plus one slow issuer request."""
    return 3 * tick_seconds + FETCH_TIMEOUT_SECONDS + STALL_GRACE_SECONDS


def run(config: Config) -> int:
    """Run the sidecar as configured; the process exit code."""
    try:
        return asyncio.run(
            run_oneshot(config) if config.oneshot else run_until_stopped(config)
        )
    except (StartupError, files.TokenDirError, ListenError) as exc:
        log.error("cannot start: %s", exc)
    except KeyboardInterrupt:
        # Only --oneshot gets here: the long-running mode handles SIGINT itself.
        log.info("interrupted")
        return 130
    except Exception:
        log.exception("the sidecar failed unexpectedly")
    return 1


async def run_oneshot(config: Config, *, clock: Clock | None = None) -> int:
    """Write the first tokens, retrying a few times; 0 once all are written."""
    clock = clock or SystemClock()
    async with token_source(config) as source:
        refresher = _refresher(config, source, CollectorRegistry(), clock)
        failed = await refresher.first_tokens()
    for state in failed:
        log.error(
            "could not write the first %s token for identity %s after %d attempts: %s",
            state.provider,
            state.config.identity,
            state.failures,
            state.last_error,
        )
    if failed:
        return 1
    log.info("wrote the first tokens; exiting as --oneshot asks")
    return 0


async def run_until_stopped(
    config: Config,
    *,
    clock: Clock | None = None,
    registry: CollectorRegistry | None = None,
    stop: asyncio.Event | None = None,
    handle_signals: bool = True,
) -> int:
    """Refresh and serve the probes until SIGTERM or SIGINT (or `stop` is set)."""
    clock = clock or SystemClock()
    registry = registry or CollectorRegistry()
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    signals = (signal.SIGTERM, signal.SIGINT) if handle_signals else ()
    for signum in signals:
        loop.add_signal_handler(signum, stop.set)
    try:
        async with token_source(config) as source:
            refresher = _refresher(config, source, registry, clock)
            refresher.adopt_files_on_disk()
            probes = Probes(
                refresher=refresher,
                registry=registry,
                clock=clock,
                settings=ProbeSettings(
                    ready_margin_seconds=config.ready_margin_seconds,
                    stall_after_seconds=stall_after_seconds(config.tick_seconds),
                ),
            )
            await _run_together(
                refresher,
                probes,
                host=config.listen_host,
                port=config.listen_port,
                stop=stop,
            )
    finally:
        for signum in signals:
            loop.remove_signal_handler(signum)
    return 0


async def _run_together(
    refresher: Refresher,
    probes: Probes,
    *,
    host: str,
    port: int,
    stop: asyncio.Event,
) -> None:
    """The refresh loop and the probe server, until `stop`; either failing
    cancels the other."""
    try:
        async with asyncio.TaskGroup() as group:
            children = [
                group.create_task(refresher.run(), name="refresh"),
                group.create_task(
                    serve_probes(probes, host=host, port=port), name="probes"
                ),
            ]
            await stop.wait()
            log.info("stopping on request")
            for child in children:
                child.cancel()
    except* ListenError as failed:
        # A busy port is a start-up problem with its own message, not a crash.
        raise failed.exceptions[0] from None


@asynccontextmanager
async def token_source(config: Config) -> AsyncIterator[TokenSource]:
    """The configured source of tokens, checked before the first use."""
    files.ensure_writable_dir(config.token_dir)
    files.remove_stale_temp_files(
        config.token_dir, [n for p in config.providers for n in p.file_names]
    )
    if isinstance(config.signing, KeyMode):
        yield _key_source(config.signing, config)
    else:
        yield _issuer_source(config.signing)


def _key_source(signing: KeyMode, config: Config) -> TokenSource:
    signer = KeyFileSigner(signing.key_file)
    try:
        signer.current_key()
    except OSError as exc:
        raise StartupError(
            f"cannot read the signing key {signing.key_file} "
            f"({exc.strerror or exc}); mount it there or set --key-file / WI_KEY_FILE"
        ) from exc
    except ValueError as exc:
        raise StartupError(f"{exc} (--key-file / WI_KEY_FILE)") from exc
    return KeySource(signer=signer, issuer=signing.issuer, pod=config.pod)


def _issuer_source(signing: IssuerMode) -> TokenSource:
    # Imported here: a sidecar in key mode needs no TLS client.
    from sidecar.issuer import IssuerSource, client_ssl_context

    try:
        context = client_ssl_context(signing.ca_file, signing.ca_pem)
    except OSError as exc:  # ssl.SSLError is one
        raise StartupError(
            f"cannot load the issuer's CA certificates ({exc}): fix the PEM bundle "
            f"{signing.ca_file or '(none)'} of --issuer-ca-file / WI_ISSUER_CA_FILE, "
            "or the PEM text of --issuer-ca / WI_ISSUER_CA"
        ) from exc
    return IssuerSource(
        ssl_context=context,
        token_url=signing.token_url,
        sa_token_file=signing.sa_token_file,
    )


def _refresher(
    config: Config, source: TokenSource, registry: CollectorRegistry, clock: Clock
) -> Refresher:
    providers = config.providers
    metrics = SidecarMetrics(
        registry, mode=source.mode, providers=[p.provider for p in providers]
    )
    return Refresher(
        providers=providers,
        source=source,
        metrics=metrics,
        clock=clock,
        file_mode=config.file_mode,
        tick_seconds=config.tick_seconds,
    )
