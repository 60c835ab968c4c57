"""After SIGTERM the webhook stays up, unready, for --shutdown-delay: the
Service drops the pod from its endpoints while the API server, which learns of
that a few seconds late, still gets its reviews answered."""

from __future__ import annotations

import contextlib
import json
import signal
import socket
import ssl
import time
from pathlib import Path

from tests.reliability.support import Processes, wait_for
from tests.reliability.webhook_rig import pod, review, start_webhook

DELAY = 3.0


def test_after_sigterm_the_webhook_answers_reviews_unready_for_the_delay(
    processes: Processes, tmp_path: Path
) -> None:
    webhook = start_webhook(processes, tmp_path, extra=("--shutdown-delay", str(DELAY)))
    client = webhook.client(timeout=5.0)
    body = json.dumps(review(pod())).encode()
    assert client.post_json("/mutate", body).status == 200

    signalled = time.monotonic()
    webhook.process.popen.send_signal(signal.SIGTERM)
    wait_for(
        lambda: "/readyz answers 503" in webhook.process.log(),
        timeout=5,
        what="the stop to begin",
    )
    # The server closed the idle kept-alive connection when the stop began; a
    # pooling client (Go's, the API server's) sees that and opens a new one.
    client.close()
    readyz = client.request("GET", "/readyz")
    assert readyz.status == 503
    assert json.loads(readyz.body)["stopping"] is True
    answered = client.post_json("/mutate", body)  # the API server, still routing here
    assert answered.status == 200
    assert json.loads(answered.body)["response"]["allowed"] is True
    # Each answer tells the client to take its next request elsewhere.
    assert answered.headers.get("Connection") == "close"

    assert webhook.process.popen.wait(timeout=DELAY + 25) == 0
    lasted = time.monotonic() - signalled
    assert lasted >= DELAY - 0.5, f"stopped after {lasted:.1f} s"
    client.close()


def test_a_kept_alive_idle_connection_is_closed_when_the_stop_begins(
    processes: Processes, tmp_path: Path
) -> None:
    """The API server pools its connections; an idle one left open until the
    listener closes would meet a closed socket with its next review."""
    webhook = start_webhook(processes, tmp_path, extra=("--shutdown-delay", "30"))
    with socket.create_connection(("127.0.0.1", webhook.port), timeout=5) as raw:
        context = ssl.create_default_context(cafile=str(webhook.cafile))
        with context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            tls.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            assert b" 200 " in tls.recv(65536)
            webhook.process.popen.send_signal(signal.SIGTERM)
            tls.settimeout(10)
            with contextlib.suppress(ssl.SSLError, ConnectionError):
                assert tls.recv(65536) == b""  # closed by the server, well before 30 s
    webhook.process.popen.send_signal(signal.SIGTERM)
    assert webhook.process.popen.wait(timeout=25) == 0


def test_a_second_signal_skips_the_rest_of_the_delay(
    processes: Processes, tmp_path: Path
) -> None:
    webhook = start_webhook(processes, tmp_path, extra=("--shutdown-delay", "60"))
    webhook.process.popen.send_signal(signal.SIGTERM)
    wait_for(
        lambda: "/readyz answers 503" in webhook.process.log(),
        timeout=5,
        what="the stop to begin",
    )
    signalled = time.monotonic()
    webhook.process.popen.send_signal(signal.SIGTERM)
    assert webhook.process.popen.wait(timeout=25) == 0
    assert time.monotonic() - signalled < 20


def test_sigint_right_behind_sigterm_skips_the_delay(
    processes: Processes, tmp_path: Path
) -> None:
    """Two different signals sent at once both count (two of the same kind
    sent at once are one pending signal to the kernel)."""
    webhook = start_webhook(processes, tmp_path, extra=("--shutdown-delay", "60"))
    signalled = time.monotonic()
    webhook.process.popen.send_signal(signal.SIGTERM)
    webhook.process.popen.send_signal(signal.SIGINT)
    assert webhook.process.popen.wait(timeout=25) == 0
    assert time.monotonic() - signalled < 20
    assert "signal again to skip the wait" in webhook.process.log()
