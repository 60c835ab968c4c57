"""Flags, environment variables and the validation of the sidecar's settings."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest

from sidecar import cli, settings
from sidecar.config import ConfigError, IssuerMode, KeyMode, validate
from sidecar.settings import Settings
from tests.sidecar.sidecar_helpers import GCP_AUDIENCE, ISSUER, REPO_ROOT

ALL_INTERFACES = "0.0.0.0"  # noqa: S104 (what the default listen address means)
KEY_MODE = {
    "WI_MODE": "key",
    "WI_ISSUER": ISSUER,
    "WI_AWS_IDENTITY": "s3-reader",
    "WI_PROJECT": "team-a",
    "WI_NAMESPACE": "team-a",
}


def problems_of(argv: list[str], env: dict[str, str]) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        cli.load_config(argv, env)
    return caught.value.problems


def test_every_setting_is_a_flag_and_an_env_var_from_the_interface_table() -> None:
    documented = re.findall(
        r"^\| `(WI_[A-Z_]+)` \| `(--[a-z-]+)` \|",
        (REPO_ROOT / "docs" / "interfaces.md").read_text(),
        re.MULTILINE,
    )
    ours = [(settings.env_var(n), settings.flag(n)) for n in settings.names()]
    assert sorted(ours) == sorted(documented)


def test_help_documents_each_flag_with_its_env_var_and_default(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.build_parser().parse_args(["--help"])
    assert exited.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for name in settings.names():
        assert settings.flag(name) in text
        assert f"env {settings.env_var(name)};" in text
    assert "[env WI_LISTEN; default: 0.0.0.0:15090]" in text
    assert "[env WI_AWS_IDENTITY; default: empty]" in text


def test_defaults_match_the_interface_table(tmp_path: Path) -> None:
    config = validate(
        Settings(
            mode="issuer",
            issuer_token_url="https://issuer.test/token",
            aws_identity="s3-reader",
        )
    )
    assert isinstance(config.signing, IssuerMode)
    assert config.signing.ca_file is None
    assert str(config.signing.sa_token_file) == (
        "/var/run/secrets/workloadidentity.dev-sa/token"
    )
    assert str(config.token_dir) == "/var/run/secrets/workloadidentity.dev"
    assert config.file_mode == 0o644
    assert (config.listen_host, config.listen_port) == (ALL_INTERFACES, 15090)
    assert config.ready_margin_seconds == 5
    assert config.tick_seconds == 1
    assert config.pod.service_account == "default"
    assert config.oneshot is False
    (aws,) = config.providers
    assert (aws.audience, aws.expiration_seconds) == ("sts.amazonaws.com", 3600)
    assert str(aws.token_path) == "/var/run/secrets/workloadidentity.dev/aws-token"


def test_env_vars_fill_in_for_missing_flags() -> None:
    config = cli.load_config([], {**KEY_MODE, "WI_TICK_SECONDS": "0.5"})
    assert isinstance(config.signing, KeyMode)
    assert config.signing.issuer == ISSUER
    assert config.tick_seconds == 0.5


def test_a_flag_wins_over_its_env_var() -> None:
    config = cli.load_config(
        ["--tick-seconds", "2", "--oneshot"], {**KEY_MODE, "WI_TICK_SECONDS": "5"}
    )
    assert config.tick_seconds == 2
    assert config.oneshot is True
    config = cli.load_config(["--oneshot", "false"], {**KEY_MODE, "WI_ONESHOT": "true"})
    assert config.oneshot is False


def test_an_empty_env_var_counts_as_unset() -> None:
    config = cli.load_config(
        [], {**KEY_MODE, "WI_SERVICE_ACCOUNT": "", "WI_MODE": "key"}
    )
    assert config.pod.service_account == "default"


def test_key_mode_without_an_issuer_says_which_setting_to_set() -> None:
    env = {k: v for k, v in KEY_MODE.items() if k != "WI_ISSUER"}
    (problem,) = problems_of([], env)
    assert problem.startswith("--issuer / WI_ISSUER: is required")
    assert "https://" in problem


def test_no_provider_configured_names_both_identity_settings() -> None:
    env = {k: v for k, v in KEY_MODE.items() if k != "WI_AWS_IDENTITY"}
    (problem,) = problems_of([], env)
    assert "no provider configured" in problem
    assert "--aws-identity / WI_AWS_IDENTITY" in problem
    assert "--gcp-identity / WI_GCP_IDENTITY" in problem


def test_a_gcp_audience_without_a_provider_is_refused() -> None:
    pool_only = GCP_AUDIENCE.split("/providers/")[0]
    (problem,) = problems_of(
        ["--gcp-identity", "bq-reader", "--gcp-audience", pool_only], KEY_MODE
    )
    assert problem.startswith("--gcp-audience / WI_GCP_AUDIENCE:")
    assert "/providers/PROVIDER" in problem


def test_a_gcp_identity_without_an_audience_is_refused() -> None:
    (problem,) = problems_of(["--gcp-identity", "bq-reader"], KEY_MODE)
    assert problem.startswith("--gcp-audience / WI_GCP_AUDIENCE: is required")


def test_issuer_mode_needs_an_https_token_url() -> None:
    env = {"WI_AWS_IDENTITY": "s3-reader"}
    (problem,) = problems_of([], env)
    assert problem.startswith("--issuer-token-url / WI_ISSUER_TOKEN_URL: is required")
    (problem,) = problems_of(["--issuer-token-url", "http://issuer.test/token"], env)
    assert "is not an https:// URL" in problem


def test_an_inline_issuer_ca_must_hold_a_pem_certificate() -> None:
    env = {
        "WI_AWS_IDENTITY": "s3-reader",
        "WI_ISSUER_TOKEN_URL": "https://issuer.test/token",
        "WI_ISSUER_CA": "/etc/workload-identity/tls/ca.crt",  # a path, not PEM
    }
    (problem,) = problems_of([], env)
    assert problem.startswith("--issuer-ca / WI_ISSUER_CA: holds no PEM certificate")


def test_every_problem_is_reported_at_once() -> None:
    problems = problems_of(
        [
            "--mode",
            "local",
            "--file-mode",
            "0666",
            "--tick-seconds",
            "0",
            "--listen",
            "15090",
            "--log-format",
            "xml",
        ],
        {},
    )
    named = [p.split(":")[0] for p in problems]
    for setting in (
        "--mode / WI_MODE",
        "--file-mode / WI_FILE_MODE",
        "--tick-seconds / WI_TICK_SECONDS",
        "--listen / WI_LISTEN",
        "--log-format / WI_LOG_FORMAT",
    ):
        assert setting in named


@pytest.mark.parametrize("mode", ["0666", "0646", "0660", "1644", "rw-r--r--"])
def test_file_modes_that_let_others_write_or_are_not_octal_are_refused(
    mode: str,
) -> None:
    (problem,) = problems_of(["--file-mode", mode], KEY_MODE)
    assert problem.startswith("--file-mode / WI_FILE_MODE:")


@pytest.mark.parametrize(
    ("text", "mode"), [("0644", 0o644), ("640", 0o640), ("0o600", 0o600)]
)
def test_file_modes_are_read_as_octal(text: str, mode: int) -> None:
    assert cli.load_config(["--file-mode", text], KEY_MODE).file_mode == mode


@pytest.mark.parametrize("name", ["S3-Reader", "s3:reader", "-s3", "s3 reader"])
def test_identity_names_that_could_confuse_sub_are_refused(name: str) -> None:
    (problem,) = problems_of([f"--aws-identity={name}"], KEY_MODE)
    assert problem.startswith("--aws-identity / WI_AWS_IDENTITY:")


def test_a_colon_in_the_namespace_is_refused() -> None:
    (problem,) = problems_of(["--namespace", "team:a"], KEY_MODE)
    assert problem == "--namespace / WI_NAMESPACE: must not contain ':'"


@pytest.mark.parametrize("lifetime", ["9", "86401", "1h"])
def test_lifetimes_outside_the_documented_range_are_refused(lifetime: str) -> None:
    (problem,) = problems_of(["--aws-expiration-seconds", lifetime], KEY_MODE)
    assert problem.startswith("--aws-expiration-seconds / WI_AWS_EXPIRATION_SECONDS:")


def test_a_ready_margin_longer_than_what_is_left_at_a_refresh_is_refused() -> None:
    # A 10 s token (iat backdated by 30 s) is replaced with 8 s left.
    (problem,) = problems_of(
        ["--aws-expiration-seconds", "10", "--ready-margin-seconds", "8"], KEY_MODE
    )
    assert problem.startswith("--ready-margin-seconds / WI_READY_MARGIN_SECONDS:")
    assert "would fail before every refresh" in problem
    config = cli.load_config(
        ["--aws-expiration-seconds", "10", "--ready-margin-seconds", "7.9"], KEY_MODE
    )
    assert config.ready_margin_seconds == 7.9


@pytest.mark.parametrize(
    ("listen", "host", "port"),
    [
        ("0.0.0.0:15090", ALL_INTERFACES, 15090),
        ("[::]:9000", "::", 9000),
        (":8080", ALL_INTERFACES, 8080),
        ("127.0.0.1:0", "127.0.0.1", 0),
    ],
)
def test_listen_addresses_are_parsed(listen: str, host: str, port: int) -> None:
    config = cli.load_config(["--listen", listen], KEY_MODE)
    assert (config.listen_host, config.listen_port) == (host, port)


def test_the_gcp_credential_configuration_points_at_the_gcp_token(
    tmp_path: Path,
) -> None:
    config = cli.load_config(
        [
            "--token-dir",
            str(tmp_path),
            "--gcp-identity",
            "bq-reader",
            "--gcp-audience",
            GCP_AUDIENCE,
            "--gcp-service-account",
            "bq@proj.iam.gserviceaccount.com",
            "--gcp-sts-url",
            "http://127.0.0.1:9/v1/token",
            "--gcp-iam-credentials-url",
            "http://127.0.0.1:9",
        ],
        KEY_MODE,
    )
    aws, gcp = config.providers
    (companion,) = gcp.companion_files
    assert companion.path == tmp_path / "gcp-credentials.json"
    document = json.loads(companion.content)
    assert document["type"] == "external_account"
    assert document["audience"] == GCP_AUDIENCE
    assert document["credential_source"]["file"] == f"{tmp_path}/gcp-token"
    assert document["token_url"] == "http://127.0.0.1:9/v1/token"
    assert document["service_account_impersonation_url"] == (
        "http://127.0.0.1:9/v1/projects/-/serviceAccounts/"
        "bq@proj.iam.gserviceaccount.com:generateAccessToken"
    )
    assert gcp.token_path == tmp_path / "gcp-token"
    assert aws.token_path == tmp_path / "aws-token"


def test_the_config_is_frozen() -> None:
    config = cli.load_config([], KEY_MODE)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.tick_seconds = 5  # type: ignore[misc]


def test_a_misspelt_variable_is_reported_with_the_setting_it_resembles() -> None:
    env = {
        "WI_AWS_IDENTITIY": "x",
        "WI_AWS_IDENTITY": "y",
        "WI_TOKENDIR": "/tmp",
        "HOME": "/root",
        # recorded by the webhook, not settings of the sidecar: no warning
        "WI_AWS_ROLE_ARN": "arn:aws:iam::111122223333:role/r",
        "WI_AWS_SESSION_NAME": "app",
        "WI_GCP_PROJECT_ID": "proj",
    }
    assert settings.likely_typos(env) == {
        "WI_AWS_IDENTITIY": "WI_AWS_IDENTITY",
        "WI_TOKENDIR": "WI_TOKEN_DIR",
    }


def test_main_exits_2_and_prints_every_problem(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in settings.names():
        monkeypatch.delenv(settings.env_var(name), raising=False)
    assert cli.main(["--mode", "key"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("python -m sidecar: invalid configuration:")
    assert "--issuer / WI_ISSUER" in err
    assert "no provider configured" in err
