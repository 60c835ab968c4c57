"""`python -m bench.reference`: the floor under the webhook's figures.

A bare aiohttp handler on the same TLS pair that parses the request as the
webhook does and sends back answer bytes of the same size, but decides
nothing. The webhook's rate next to this one's, both measured in the same
run, says how much of a request's cost is ours and how much is the transport.
"""

from __future__ import annotations

import argparse
import json
import ssl
from collections.abc import Sequence
from pathlib import Path

from aiohttp import web

MAX_BODY_BYTES = 3 * 1024 * 1024


def create_app(answer: dict[str, object]) -> web.Application:
    response = answer["response"]
    assert isinstance(response, dict)

    async def mutate(request: web.Request) -> web.Response:
        body = json.loads(await request.read())
        out = {**answer, "response": {**response, "uid": body["request"]["uid"]}}
        return web.Response(
            body=json.dumps(out, separators=(",", ":")).encode(),
            content_type="application/json",
        )

    app = web.Application(client_max_size=MAX_BODY_BYTES)
    app.router.add_post("/mutate", mutate)
    return app


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.reference")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--cert", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--answer", required=True, help="AdmissionReview to send")
    args = parser.parse_args(argv)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(args.cert, args.key)
    answer = json.loads(Path(args.answer).read_text())
    web.run_app(
        create_app(answer),
        host="127.0.0.1",
        port=args.port,
        ssl_context=context,
        access_log=None,
        print=None,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
