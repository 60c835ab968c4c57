"""The forbidden patterns the whole suite's log scan applies: they catch a
token and a private key wherever they sit in a record, and pass the hints
and certificates that are no secret."""

from __future__ import annotations

import logging
from pathlib import Path

from oidc_tokens.claims import Subject, build_claims
from oidc_tokens.keys import generate_rsa_key, private_key_pem
from oidc_tokens.signing import sign
from tests.log_scan import LogScanner, secrets_in
from webhook.tls import write_self_signed


def _token() -> str:
    claims = build_claims(
        Subject("payments-s3", "payments", "payments", "reports"),
        issuer="https://issuer.reliability.test",
        audience="sts.amazonaws.com",
        now=1_800_000_000,
        lifetime_seconds=600,
    )
    return sign(claims, generate_rsa_key())


def _record(
    message: str, *args: object, error: BaseException | None = None
) -> logging.LogRecord:
    # Made by hand, not logged: the suite's own scan must not see it.
    exc_info = (type(error), error, error.__traceback__) if error else None
    return logging.LogRecord(
        "webhook.test", logging.INFO, __file__, 1, message, args, exc_info
    )


def test_a_token_or_a_private_key_anywhere_in_a_record_is_caught() -> None:
    token = _token()
    pem = private_key_pem(generate_rsa_key()).decode()
    scanner = LogScanner()
    scanner.check(_record("issued %s to a pod", token))
    scanner.check(_record("loaded key\n%s", pem))
    scanner.check(
        _record("failed", error=ValueError(f"bad answer {{'token': '{token}'}}"))
    )
    found = scanner.take()
    assert [hit.split(": ", 1)[1].split(" ", 1)[0] for hit in found] == [
        "JWT",
        "PEM",
        "JWT",
    ]
    assert all(
        token not in hit and pem not in hit for hit in found
    )  # never repeated whole


def test_hints_certificates_and_token_like_names_are_no_secret(tmp_path: Path) -> None:
    write_self_signed(
        str(tmp_path / "c.pem"), str(tmp_path / "k.pem"), hosts=["127.0.0.1"]
    )
    certificate = (tmp_path / "c.pem").read_text()
    assert secrets_in("expected a -----BEGIN PRIVATE KEY----- block in key.pem") == []
    assert secrets_in(certificate) == []
    assert secrets_in("read /var/run/secrets/workloadidentity.dev/aws-token") == []
    assert secrets_in("kid eyJhbGciOi is unknown") == []
    assert secrets_in(_token()) != []
