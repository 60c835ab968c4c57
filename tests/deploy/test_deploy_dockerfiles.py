"""Structure of Dockerfile.webhook and Dockerfile.sidecar.

No image is built here (that needs a container runtime); these tests pin what
keeps the images small, cache-friendly and non-root.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from deploy_support import (
    REPO,
    Stage,
    copied_sources,
    parse_dockerfile,
    pod_templates,
    render,
    resolve_args,
    webhook_deployment,
)

PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
PACKAGES = {"webhook", "sidecar", "oidc_tokens"}


IMAGES = {
    "Dockerfile.webhook": {"module": "webhook", "packages": {"webhook", "oidc_tokens"}},
    "Dockerfile.sidecar": {"module": "sidecar", "packages": {"sidecar", "oidc_tokens"}},
}


@pytest.fixture(params=sorted(IMAGES))
def dockerfile(
    request: pytest.FixtureRequest,
) -> tuple[str, dict[str, str], list[Stage]]:
    name: str = request.param
    args, stages = parse_dockerfile(REPO / name)
    return name, args, stages


def test_multi_stage_from_python_slim(
    dockerfile: tuple[str, dict[str, str], list[Stage]],
) -> None:
    _, args, stages = dockerfile
    assert len(stages) >= 2
    for stage in stages:
        assert resolve_args(stage.base, args) == "python:3.11-slim"


def test_dependencies_are_installed_before_the_source_is_copied(
    dockerfile: tuple[str, dict[str, str], list[Stage]],
) -> None:
    _, _, stages = dockerfile
    build = stages[0]
    install_at = next(
        i
        for i, (kind, args) in enumerate(build.steps)
        if kind == "RUN" and "pip install" in args
    )
    for i, (kind, args) in enumerate(build.steps):
        if kind == "COPY":
            sources = copied_sources(Stage(base="", name=None, steps=[(kind, args)]))
            assert sources <= {"pyproject.toml", "constraints.txt"}, args
            assert i < install_at
    assert "-c constraints.txt" in build.steps[install_at][1]
    assert not copied_sources(build) & PACKAGES, "the build stage needs no source"


def test_final_stage_copies_the_venv_and_only_its_packages(
    dockerfile: tuple[str, dict[str, str], list[Stage]],
) -> None:
    name, _, stages = dockerfile
    final = stages[-1]
    assert any("--from=build" in c and "/opt/venv" in c for c in final.all("COPY"))
    assert copied_sources(final) == IMAGES[name]["packages"]
    for args in final.all("COPY"):
        assert not re.match(r"^(--\S+\s+)*\.\s", args), "never COPY the whole context"


def test_sidecar_image_never_contains_the_webhook() -> None:
    text = (REPO / "Dockerfile.sidecar").read_text()
    _, stages = parse_dockerfile(REPO / "Dockerfile.sidecar")
    assert all("webhook" not in copied_sources(stage) for stage in stages)
    assert "['optional-dependencies']['sidecar']" in text


def test_runs_as_a_non_root_user_with_an_exec_entrypoint(
    dockerfile: tuple[str, dict[str, str], list[Stage]],
) -> None:
    name, _, stages = dockerfile
    final = stages[-1]
    user = final.all("USER")[-1]
    uid = user.split(":")[0]
    assert uid.isdigit(), "a numeric user lets Kubernetes check runAsNonRoot"
    assert int(uid) == 65532
    entrypoint = json.loads(final.all("ENTRYPOINT")[-1])
    assert entrypoint[1:] == ["-m", IMAGES[name]["module"]]
    assert entrypoint[0].endswith("python")
    for run in final.all("RUN"):
        assert run.startswith("["), "final stage RUN steps need no shell"


def test_sidecar_extra_is_the_small_set_the_image_installs() -> None:
    extra = PYPROJECT["project"]["optional-dependencies"]["sidecar"]
    names = {re.split(r"[=<>!~\[]", requirement)[0].lower() for requirement in extra}
    assert names == {"prometheus-client", "cryptography"}


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("Dockerfile.webhook", PYPROJECT["project"]["dependencies"]),
        (
            "Dockerfile.sidecar",
            PYPROJECT["project"]["optional-dependencies"]["sidecar"],
        ),
    ],
)
def test_requirements_step_lists_what_pyproject_pins(
    name: str, expected: list[str], tmp_path: Path
) -> None:
    """Runs the build stage's `python -c` against pyproject.toml."""
    _, stages = parse_dockerfile(REPO / name)
    run = next(
        args for kind, args in stages[0].steps if kind == "RUN" and "tomllib" in args
    )
    command = run.split(">", 1)[0].strip()
    words = shlex.split(command)
    assert words[:2] == ["python", "-c"]
    (tmp_path / "pyproject.toml").write_bytes((REPO / "pyproject.toml").read_bytes())
    result = subprocess.run(
        [sys.executable, "-c", words[2]],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    assert result.stdout.split() == expected


def test_manifests_run_the_images_as_their_user() -> None:
    pod = webhook_deployment(render("base"))["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsUser"] == 65532
    assert pod["containers"][0]["args"][0] == "serve"
    for obj in render("overlays/self-signed"):
        for template in pod_templates(obj):
            assert template["spec"]["securityContext"]["runAsUser"] == 65532
