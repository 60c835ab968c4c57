"""`python -m sidecar` / `workload-identity-sidecar`: flags, env and exit codes.

Exit codes: 0 done (or stopped by SIGTERM/SIGINT), 1 could not start or, with
--oneshot, could not write the first tokens, 2 invalid configuration.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from sidecar import logs, settings
from sidecar.config import Config, ConfigError, validate

log = logging.getLogger(__name__)

_DESCRIPTION = """\
Keep short-lived OIDC tokens for AWS and GCP in a shared volume, and rewrite
them at about 80% of their lifetime. Every flag falls back to its environment
variable, then to its default; an empty variable counts as unset.
"""

_EPILOG = """\
files written to the token directory:
  aws-token              JWT for AWS_WEB_IDENTITY_TOKEN_FILE (with --aws-identity)
  gcp-token              JWT named by the GCP credential configuration
  gcp-credentials.json   external_account configuration for
                         GOOGLE_APPLICATION_CREDENTIALS (with --gcp-identity)

probes on --listen: /readyz (every file holds a token with more than
--ready-margin-seconds left), /healthz (the refresh loop is progressing and no
token has expired), /metrics (Prometheus).

exit codes: 0 done or stopped by SIGTERM, 1 cannot start or --oneshot failed,
2 invalid configuration.
"""


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """argparse's, with the width worked out here: argparse would import
    shutil for it, and shutil loads bz2 and lzma into every pod."""

    def __init__(self, prog: str) -> None:
        super().__init__(prog, width=_terminal_columns() - 2)


def _terminal_columns() -> int:
    # The order of shutil.get_terminal_size: $COLUMNS, the terminal, 80.
    columns = os.environ.get("COLUMNS", "")
    if columns.isdigit() and int(columns) > 0:
        return int(columns)
    if sys.__stdout__ is None:
        return 80
    try:
        return os.get_terminal_size(sys.__stdout__.fileno()).columns or 80
    except (ValueError, OSError):
        return 80


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m sidecar",
        description=_DESCRIPTION,
        epilog=_EPILOG,
        formatter_class=_HelpFormatter,
    )
    for name in settings.names():
        default = settings.default(name) or "empty"
        help_text = (
            f"{settings.help_text(name)} "
            f"[env {settings.env_var(name)}; default: {default}]"
        )
        if name == "oneshot":
            # `--oneshot` alone means true; `--oneshot false` overrides the env.
            parser.add_argument(
                settings.flag(name),
                dest=name,
                nargs="?",
                const="true",
                metavar=settings.metavar(name),
                help=help_text,
            )
        else:
            parser.add_argument(
                settings.flag(name),
                dest=name,
                metavar=settings.metavar(name),
                help=help_text,
            )
    return parser


def load_config(
    argv: Sequence[str] | None, environ: dict[str, str] | None = None
) -> Config:
    """Parse flags with env fallback and validate; raises ConfigError."""
    arguments = build_parser().parse_args(argv)
    environ = dict(os.environ) if environ is None else environ
    return validate(settings.Settings.resolve(vars(arguments), environ))


def main(argv: Sequence[str] | None = None) -> int:
    try:
        config = load_config(argv)
    except ConfigError as exc:
        print(f"python -m sidecar: {exc}", file=sys.stderr)
        return 2
    logs.configure(
        level=config.log_level,
        json_format=config.log_format == "json",
        context=_log_context(config),
    )
    for given, meant in settings.likely_typos(os.environ).items():
        log.warning("ignoring %s, which is no setting; did you mean %s?", given, meant)
    log.info(
        "starting in %s mode%s for %s",
        config.mode,
        " (oneshot)" if config.oneshot else "",
        ", ".join(f"{p.provider} identity {p.identity}" for p in config.providers),
    )
    if config.mode == "key":
        _without_tls()
    from sidecar import runtime  # after the line above, which it depends on

    return runtime.run(config)


def _without_tls() -> None:
    """Keep the ssl module out of a process that makes no TLS connection.

    Key mode signs locally and serves plain HTTP, but asyncio imports ssl
    whenever it can, to offer TLS; ssl brings OpenSSL's TLS library and about
    1.3 MiB into every pod. A None in `sys.modules` is Python's way of saying
    that a module is not available, and asyncio then goes without TLS.
    """
    if "ssl" not in sys.modules:
        sys.modules["ssl"] = None  # type: ignore[assignment]


def _log_context(config: Config) -> dict[str, str]:
    pod = config.pod
    context = {}
    if pod.namespace or pod.name:
        context["pod"] = f"{pod.namespace}/{pod.name}"
    context["serviceAccount"] = pod.service_account
    return context
