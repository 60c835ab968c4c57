"""`python -m bench.standin`: the webhook's own /token endpoint, with the one
part that needs a cluster answered in memory.

The real endpoint (webhook/tokens_endpoint.py) asks the API server for a
TokenReview and reads the bound pod before it signs. Here the authenticator
is in-memory (any bearer token is the benchmark pod's), so the figure is the
endpoint's own cost: parsing, the scope rules, signing and metrics, over TLS.
Everything else is the code `serve --source kubernetes` runs.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from aiohttp import web

from bench import fixtures
from webhook.cache import Cache
from webhook.identities import load_identity_file
from webhook.issuer import load_issuer
from webhook.metrics import create_metrics
from webhook.namespaces import load_namespace_file
from webhook.server import Services, create_app, json_route
from webhook.sidecar_spec import SidecarSettings
from webhook.tls import ReloadingContext
from webhook.tokens_endpoint import TOKEN_PATH, BoundPod, TokenEndpoint

WEBHOOK_NAMESPACE = "workload-identity-system"
POD = BoundPod(
    namespace=fixtures.NAMESPACE,
    name="reports-7d9f8b6c5d-x2v7q",
    uid="0b4c6c1e-5f2a-4d5e-9c1b-00000000b0b0",
    service_account="reports",
    annotations={"workloadidentity.dev/tags": fixtures.POD_TAG},
)


async def authenticate(token: str) -> BoundPod:
    """Stands in for the TokenReview and the pod read: every token is POD's."""
    return POD


def create_token_app(args: argparse.Namespace) -> web.Application:
    issuer = load_issuer(args.issuer_url, [args.signing_key])
    cache = Cache(create_metrics())
    rules = load_identity_file(args.identities)
    cache.set_identities(rules.identities, rules.errors)
    cache.set_namespaces(
        load_namespace_file(args.namespaces, webhook_namespace=WEBHOOK_NAMESPACE)
    )
    services = Services(
        cache=cache,
        settings=SidecarSettings(issuer_url=issuer.url),
        issuer=issuer,
        metrics=cache.metrics,
    )
    endpoint = TokenEndpoint(services, authenticate)
    return create_app(services, extra_routes=[json_route(TOKEN_PATH, endpoint)])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.standin")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--cert", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--signing-key", required=True)
    parser.add_argument("--issuer-url", required=True)
    parser.add_argument("--identities", required=True)
    parser.add_argument("--namespaces", required=True)
    args = parser.parse_args(argv)
    tls = ReloadingContext(args.cert, args.key)
    web.run_app(
        create_token_app(args),
        host="127.0.0.1",
        port=args.port,
        ssl_context=tls.context,
        access_log=None,
        print=None,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
