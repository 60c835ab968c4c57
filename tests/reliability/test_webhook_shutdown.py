"""After SIGTERM the webhook stays up, unready, for --shutdown-delay: the
Service drops the pod from its endpoints while the API server, which learns of
that a few seconds late, still gets its reviews answered."""

from __future__ import annotations

import json
import signal
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
    readyz = client.request("GET", "/readyz")
    assert readyz.status == 503
    assert json.loads(readyz.body)["stopping"] is True
    answered = client.post_json("/mutate", body)  # the API server, still routing here
    assert answered.status == 200
    assert json.loads(answered.body)["response"]["allowed"] is True

    assert webhook.process.popen.wait(timeout=DELAY + 25) == 0
    lasted = time.monotonic() - signalled
    assert lasted >= DELAY - 0.5, f"stopped after {lasted:.1f} s"
    client.close()


def test_a_second_signal_stops_the_webhook_without_waiting_out_the_delay(
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
