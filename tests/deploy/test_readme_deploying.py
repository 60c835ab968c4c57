"""The README's "Deploying to a cluster" walk-through stays true: its overlay
renders over both certificate overlays, its identity is valid and serves its
project, its files exist, and every flag it passes to `kubectl` or to
`python -m webhook` is one that command has."""

from __future__ import annotations

import functools
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import yaml
from deploy_support import REPO, Obj, only, require_tool

README = REPO / "README.md"
SECTION = "## Deploying to a cluster"


@functools.cache
def section() -> str:
    text = README.read_text()
    assert SECTION in text, f"{README.name} has no {SECTION!r} section"
    return text.split(SECTION, 1)[1].split("\n## ", 1)[0]


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", section(), re.S)


def yaml_block(kind: str) -> Obj:
    found = [
        doc
        for block in blocks("yaml")
        if (doc := yaml.safe_load(block))["kind"] == kind
    ]
    assert len(found) == 1, f"expected one {kind} in the section"
    return found[0]


def commands(program: str) -> list[list[str]]:
    """Each `program ...` command of the shell blocks, as words: continuation
    lines joined, pipelines split, comments and redirections dropped."""
    found = []
    for block in blocks("sh"):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            for command in _split(words, "|", "&&"):
                while ">" in command:
                    at = command.index(">")
                    del command[at : at + 2]
                if command[: len(program.split())] == program.split():
                    found.append(command[len(program.split()) :])
    return found


def _split(words: list[str], *separators: str) -> list[list[str]]:
    parts: list[list[str]] = [[]]
    for word in words:
        if word in separators:
            parts.append([])
        else:
            parts[-1].append(word)
    return parts


#: Short kubectl flags whose value is the next word.
_KUBECTL_SHORT_WITH_VALUE = {"-n", "-o", "-c", "-f", "-k", "-l"}


def long_flags(words: list[str]) -> set[str]:
    return {w.split("=", 1)[0] for w in words if w.startswith("--") and w != "--"}


def command_path(words: list[str]) -> list[str]:
    """The words that are not flags nor the values of kubectl's short flags."""
    path, skip = [], False
    for word in words:
        if skip:
            skip = False
        elif word in _KUBECTL_SHORT_WITH_VALUE:
            skip = True
        elif not word.startswith("-"):
            path.append(word)
    return path


def documented(flag: str, help_text: str) -> bool:
    return re.search(rf"{re.escape(flag)}(?![\w-])", help_text) is not None


def run(argv: list[str]) -> str:
    result = subprocess.run(
        argv, cwd=REPO, capture_output=True, text=True, check=False, timeout=60
    )
    assert result.returncode == 0, f"{argv}: {result.stderr}"
    return result.stdout


@functools.cache
def help_of(argv: tuple[str, ...]) -> str:
    return run([*argv, "--help"])


def test_the_overlay_renders_over_both_certificate_overlays(tmp_path: Path) -> None:
    kubectl = require_tool("kubectl", "install kubectl 1.27 or newer")
    overlay = yaml_block("Kustomization")
    (base,) = overlay["resources"]
    assert base == "../workload-identity/deploy/overlays/cert-manager"
    (tmp_path / "workload-identity").symlink_to(REPO)
    settings = {
        literal.split("=", 1)[0]: literal.split("=", 1)[1]
        for literal in overlay["configMapGenerator"][0]["literals"]
    }
    (image,) = overlay["images"]
    for chosen in ("cert-manager", "self-signed"):
        directory = tmp_path / "my-cluster" / chosen
        directory.mkdir(parents=True)
        resources = [f"../{base.replace('cert-manager', chosen)}"]
        (directory / "kustomization.yaml").write_text(
            yaml.safe_dump({**overlay, "resources": resources})
        )
        rendered = [
            doc
            for doc in yaml.safe_load_all(run([kubectl, "kustomize", str(directory)]))
            if doc
        ]
        config = only(
            (
                o
                for o in rendered
                if o["metadata"]["name"].startswith("workload-identity-config")
            ),
            "ConfigMap",
        )
        assert settings.items() <= config["data"].items()
        deployment = only(rendered, "Deployment", "workload-identity-webhook")
        assert deployment["spec"]["template"]["spec"]["containers"][0]["image"] == (
            f"{image['newName']}:{image['newTag']}"
        )


def test_the_identity_is_valid_and_serves_the_project_it_names(
    tmp_path: Path,
) -> None:
    identity = yaml_block("WorkloadIdentity")
    (project,) = identity["spec"]["scope"]["projects"]["names"]
    label = f"workloadidentity.dev/project={project}"
    assert any(
        words[:2] == ["label", "namespace"] and label in words
        for words in commands("kubectl")
    ), f"the section never labels a namespace {label}"
    identities = tmp_path / "identities.yaml"
    identities.write_text(yaml.safe_dump(identity))
    pod = tmp_path / "pod.yaml"
    pod.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": "s3-check", "namespace": "payments-app"},
                "spec": {
                    "containers": [{"name": "s3-check", "image": "amazon/aws-cli"}]
                },
            }
        )
    )
    explained = run(
        [
            sys.executable, "-m", "webhook", "explain",
            "--identities", str(identities), "--project", project, str(pod),
        ]
    )  # fmt: skip
    assert (
        f"selected for {identity['spec']['provider']}: {identity['metadata']['name']}"
        in explained
    )


def test_the_repository_files_it_names_exist() -> None:
    named = set(
        re.findall(
            # `rollout status deploy/NAME` names a Deployment, not a path.
            r"(?<!status )\b((?:deploy|docs)/[\w./-]+\w|Dockerfile\.\w+)",
            section(),
        )
    )
    assert named
    missing = sorted(path for path in named if not (REPO / path).exists())
    assert not missing


# `--help` of several `python -m webhook` commands from one process: each
# start of the CLI takes most of a second.
_WEBHOOK_HELP = """
import contextlib, io, json, sys
from webhook.cli import build_parser
texts = {}
for path in json.loads(sys.argv[1]):
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):
        build_parser().parse_args([*path, "--help"])
    texts[" ".join(path)] = out.getvalue()
print(json.dumps(texts))
"""


def webhook_help(paths: set[tuple[str, ...]]) -> dict[str, str]:
    argv = [sys.executable, "-c", _WEBHOOK_HELP, json.dumps(sorted(paths))]
    texts: dict[str, str] = json.loads(run(argv))
    assert all(texts.values()), texts
    return texts


def test_every_kubectl_flag_it_passes_exists() -> None:
    kubectl = require_tool("kubectl", "install kubectl 1.27 or newer")
    found = commands("kubectl")
    assert found, "no kubectl command in the section"
    global_flags = run([kubectl, "options"])
    for words in found:
        words = words[: words.index("--")] if "--" in words else words
        help_text = help_of((kubectl, *command_path(words))) + global_flags
        unknown = {f for f in long_flags(words) if not documented(f, help_text)}
        assert not unknown, f"kubectl {' '.join(words)}: no such flag {unknown}"


def test_every_webhook_flag_it_passes_exists() -> None:
    found = commands(".venv/bin/python -m webhook")
    assert found, "no python -m webhook command in the section"
    paths = {}
    for words in found:
        path = command_path(words)
        paths[tuple(words)] = tuple(path[:2] if path[:1] == ["issuer"] else path[:1])
    texts = webhook_help({(), *paths.values()})
    for words, path in paths.items():
        help_text = texts[" ".join(path)] + texts[""]
        unknown = {f for f in long_flags(list(words)) if not documented(f, help_text)}
        assert not unknown, f"webhook {' '.join(words)}: no such flag {unknown}"
