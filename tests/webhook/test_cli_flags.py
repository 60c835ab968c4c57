"""Flags that admins put in either place, and issuer documents made from public keys."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

from webhook.cli import build_parser, main


def test_logging_flags_work_before_and_after_the_command() -> None:
    parser = build_parser()
    assert parser.parse_args(["--log-level", "DEBUG", "review"]).log_level == "DEBUG"
    assert parser.parse_args(["review", "--log-level", "DEBUG"]).log_level == "DEBUG"
    assert parser.parse_args(["review", "--log-format", "json"]).log_format == "json"
    assert parser.parse_args(["review"]).log_level == "INFO"


def test_discovery_and_jwks_need_no_private_key(tmp_path: Path) -> None:
    key = tmp_path / "key.pem"
    assert main(["issuer", "keygen", "--out", str(key)], out=io.StringIO()) == 0
    public = tmp_path / "public.pem"
    from cryptography.hazmat.primitives import serialization

    from oidc_tokens.keys import load_private_key

    public.write_bytes(
        load_private_key(key.read_bytes())
        .public_key()
        .public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    out = io.StringIO()
    assert (
        main(
            ["issuer", "discovery", "--issuer-url", "https://oidc.example.com/"],
            out=out,
        )
        == 0
    )
    assert json.loads(out.getvalue())["issuer"] == "https://oidc.example.com"
    out = io.StringIO()
    assert (
        main(
            [
                "issuer",
                "jwks",
                "--issuer-url",
                "https://oidc.example.com",
                "--public-key",
                str(public),
            ],
            out=out,
        )
        == 0
    )
    from_public = json.loads(out.getvalue())
    out = io.StringIO()
    assert (
        main(
            [
                "issuer",
                "jwks",
                "--issuer-url",
                "https://oidc.example.com",
                "--signing-key",
                str(key),
            ],
            out=out,
        )
        == 0
    )
    assert json.loads(out.getvalue()) == from_public
    assert [k["kty"] for k in from_public["keys"]] == ["RSA"]
    assert "d" not in from_public["keys"][0]


def test_jwks_without_any_key_says_what_to_pass() -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "webhook",
            "issuer",
            "jwks",
            "--issuer-url",
            "https://oidc.example.com",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2
    assert "--public-key" in result.stderr


def test_keygen_makes_a_private_directory_for_its_key(tmp_path: Path) -> None:
    key = tmp_path / ".state" / "signing-key.pem"  # the Quick tour's path
    assert main(["issuer", "keygen", "--out", str(key)], out=io.StringIO()) == 0
    assert key.stat().st_mode & 0o777 == 0o600
    assert key.parent.stat().st_mode & 0o777 == 0o700
    # A second run never overwrites it.
    assert main(["issuer", "keygen", "--out", str(key)], out=io.StringIO()) == 2
