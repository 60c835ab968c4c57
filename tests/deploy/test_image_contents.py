"""What the two images contain, tested without a container engine.

Each Dockerfile is replayed on this machine. Every stage gets a directory that
stands for its filesystem; the image's own paths (/opt/venv, /src, /app) are
mapped into it, and its ENV, WORKDIR, COPY (honouring .dockerignore) and RUN
steps are carried out in order, with this machine's Python standing for the
python:3.11-slim base. The entry points then run from the final stage's
directory with the image's environment alone, so a package or a dependency
that the Dockerfile does not install is missing here too.

Not replayed: the base image's own files, and USER (everything runs as the
test's user). Building both takes about 30 s on an idle machine.
"""

from __future__ import annotations

import json
import os
import posixpath
import re
import shlex
import shutil
import ssl
import subprocess
import sys
import tomllib
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import jwt
import pytest
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from deploy_support import (
    DEPLOY,
    REPO,
    Stage,
    container,
    of_kind,
    parse_dockerfile,
    pod_templates,
    render,
    resolve_args,
)
from live_support import LOOPBACK, Processes, free_port, http, wait_until

PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())

#: PATH of the python:3.11-slim image, whose /usr/local/bin holds `python`.
BASE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
BASE_IMAGE = re.compile(r"python:(?P<version>\d+\.\d+)-slim")

#: ENV the build stages set that the replay leaves unset. The images keep no
#: pip cache so that their layers stay small; here the cache only saves
#: downloading the same wheels again.
BUILD_ENV_NOT_REPLAYED = frozenset({"PIP_NO_CACHE_DIR"})
#: What the replay's steps may take: pip installs from the local index.
RUN_STEP_SECONDS = 110

ISSUER = "https://oidc.example.test"


# --- the replay ---------------------------------------------------------------


def normalized(requirement: str) -> str:
    """A distribution name as pip compares them (`PyJWT==2` -> `pyjwt`)."""
    name = re.split(r"[=<>!~\[;\s]", requirement, maxsplit=1)[0]
    return re.sub(r"[-_.]+", "-", name).lower()


def image_prefixes(stages: list[Stage]) -> tuple[str, ...]:
    """The absolute paths the Dockerfile creates or copies to, outermost only,
    longest first: everything the replay maps into a stage's directory."""
    found = set()
    for stage in stages:
        for kind, rest in stage.steps:
            if kind == "WORKDIR":
                found.add(rest)
            elif kind == "COPY":
                found |= {
                    word
                    for word in shlex.split(rest)
                    if word.startswith("/") and not word.startswith("--")
                }
    paths = {posixpath.normpath(path) for path in found}
    outermost = {
        path for path in paths if not any(path.startswith(f"{o}/") for o in paths)
    }
    assert "/" not in outermost, "the replay cannot map the whole filesystem"
    return tuple(sorted(outermost, key=len, reverse=True))


def glob_regex(pattern: str) -> str:
    """A .dockerignore pattern as a regular expression for relative paths."""
    out, i = [], 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        else:
            char = pattern[i]
            out.append({"*": "[^/]*", "?": "[^/]"}.get(char, re.escape(char)))
            i += 1
    return "".join(out)


def dockerignore(context: Path) -> Callable[[str], bool]:
    """Whether a path relative to the build context is left out of it."""
    source = context / ".dockerignore"
    patterns = []
    for raw in source.read_text().splitlines() if source.exists() else []:
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        assert not line.startswith("!"), f"{line}: exceptions are not replayed"
        patterns.append(re.compile(glob_regex(posixpath.normpath(line.strip("/")))))

    def ignored(relative: str) -> bool:
        parts = relative.split("/")
        prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
        return any(p.fullmatch(prefix) for p in patterns for prefix in prefixes)

    return ignored


def link_or_copy(source: str, destination: str) -> None:
    try:
        os.link(source, destination)
    except OSError:
        shutil.copy2(source, destination)


@dataclass
class Filesystem:
    """One stage's filesystem: the image paths under `prefixes` live in `root`."""

    root: Path
    prefixes: tuple[str, ...]

    def host(self, image_path: str) -> Path:
        path = posixpath.normpath(image_path)
        if path == "/":
            return self.root
        assert any(path == p or path.startswith(f"{p}/") for p in self.prefixes), (
            f"{image_path} is outside the paths the replay maps ({self.prefixes})"
        )
        return self.root / path.lstrip("/")

    def rewrite(self, text: str) -> str:
        """`text` with every mapped image path replaced by where it lives here."""
        alternatives = "|".join(re.escape(prefix) for prefix in self.prefixes)
        return re.sub(
            rf"(?<![\w./-])({alternatives})(?=/|[^\w.-]|$)",
            lambda match: f"{self.root}{match.group(1)}",
            text,
        )


def expand(value: str, env: dict[str, str]) -> str:
    """`$NAME` and `${NAME}` as Docker expands them in ENV."""
    return re.sub(
        r"\$(?:\{(\w+)\}|(\w+))",
        lambda m: env.get(m.group(1) or m.group(2), ""),
        value,
    )


@dataclass
class Image:
    """A replayed image: its final stage's filesystem, ENV, WORKDIR and
    ENTRYPOINT/CMD, with image paths already mapped."""

    fs: Filesystem
    base_path: str
    """The base image's PATH, as the replay maps it."""
    declared_env: dict[str, str]
    workdir: Path
    entrypoint: list[str]
    cmd: list[str]
    home: Path

    def env(self, **extra: str) -> dict[str, str]:
        """What a container of the image sees: the image's ENV over the base
        image's, the suite's guards against reaching a cloud, and `extra`."""
        guards = {
            name: value
            for name, value in os.environ.items()
            if name.startswith(("AWS_", "GCE_", "NO_GCE"))
        }
        return {
            "PATH": self.base_path,
            "HOME": str(self.home),
            "LANG": "C.UTF-8",
            **self.declared_env,
            **guards,
            **extra,
        }

    def run(self, argv: list[str], **extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            argv,
            cwd=self.workdir,
            env=self.env(**extra),
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
        )

    def python(self, code: str, *args: str) -> subprocess.CompletedProcess[str]:
        """`python -c code` with the image's `python` (the first on its PATH)."""
        python = shutil.which("python", path=self.env()["PATH"])
        assert python, "no python on the image's PATH"
        return self.run([python, "-c", code, *args])


@dataclass
class Replay:
    """Carries out one Dockerfile's steps under `into`."""

    dockerfile: Path
    into: Path
    context: Path = REPO
    stages: dict[str, Filesystem] = field(default_factory=dict)

    def build(self) -> Image:
        args, stages = parse_dockerfile(self.dockerfile)
        prefixes = image_prefixes(stages)
        base_path = self._base_python(args, stages)
        ignored = dockerignore(self.context)
        image: Image | None = None
        for index, stage in enumerate(stages):
            fs = Filesystem(self.into / (stage.name or f"stage-{index}"), prefixes)
            fs.root.mkdir(parents=True)
            image = self._stage(stage, fs, base_path, ignored)
            self.stages[stage.name or str(index)] = fs
        assert image is not None, f"{self.dockerfile.name} has no stage"
        return image

    def _base_python(self, args: dict[str, str], stages: list[Stage]) -> str:
        """The base image's PATH, with this machine's Python as its `python`."""
        bases = {resolve_args(stage.base, args) for stage in stages}
        versions = {m["version"] for b in bases if (m := BASE_IMAGE.fullmatch(b))}
        assert len(versions) == 1 == len(bases), f"unexpected base images {bases}"
        running = f"{sys.version_info.major}.{sys.version_info.minor}"
        assert versions == {running}, (
            f"the images build on Python {versions.pop()}; run the tests with it, "
            f"not {running}"
        )
        local_bin = self.into / "base" / "usr" / "local" / "bin"
        local_bin.mkdir(parents=True)
        base = Path(getattr(sys, "_base_executable", sys.executable))
        for name in ("python", "python3"):
            (local_bin / name).symlink_to(base)
        return BASE_PATH.replace("/usr/local/bin", str(local_bin))

    def _stage(
        self,
        stage: Stage,
        fs: Filesystem,
        base_path: str,
        ignored: Callable[[str], bool],
    ) -> Image:
        declared: dict[str, str] = {}
        workdir = "/"
        entrypoint: list[str] = []
        cmd: list[str] = []
        for kind, rest in stage.steps:
            if kind == "ENV":
                for word in shlex.split(rest):
                    name, equals, value = word.partition("=")
                    assert equals, f"ENV {rest}: only NAME=value is replayed"
                    value = expand(fs.rewrite(value), {"PATH": base_path, **declared})
                    declared[name] = value
            elif kind == "WORKDIR":
                workdir = posixpath.join(workdir, rest)
                fs.host(workdir).mkdir(parents=True, exist_ok=True)
            elif kind == "COPY":
                self._copy(rest, fs=fs, workdir=workdir, ignored=ignored)
            elif kind == "RUN":
                build_env = {
                    **{
                        name: value
                        for name, value in os.environ.items()
                        if not name.startswith(("PYTHON", "VIRTUAL_ENV", "WI_"))
                    },
                    "PATH": base_path,
                    **declared,
                }
                for name in BUILD_ENV_NOT_REPLAYED:
                    build_env.pop(name, None)
                self._run(rest, fs=fs, cwd=fs.host(workdir), env=build_env)
            elif kind == "ENTRYPOINT":
                entrypoint = [fs.rewrite(word) for word in json.loads(rest)]
            elif kind == "CMD":
                cmd = [fs.rewrite(word) for word in json.loads(rest)]
            else:
                assert kind in {"USER", "EXPOSE", "LABEL"}, f"{kind} is not replayed"
        home = self.into / "home"
        home.mkdir(exist_ok=True)
        return Image(
            fs=fs,
            base_path=base_path,
            declared_env=declared,
            workdir=fs.host(workdir),
            entrypoint=entrypoint,
            cmd=cmd,
            home=home,
        )

    def _copy(
        self,
        rest: str,
        *,
        fs: Filesystem,
        workdir: str,
        ignored: Callable[[str], bool],
    ) -> None:
        words = shlex.split(rest)
        from_stage = None
        for flag in (w for w in words if w.startswith("--")):
            name, _, value = flag[2:].partition("=")
            assert name == "from", f"COPY {flag} is not replayed"
            from_stage = self.stages[value]
        *sources, dest = [w for w in words if not w.startswith("--")]
        into_directory = dest.endswith("/") or len(sources) > 1
        target = fs.host(posixpath.join(workdir, dest))

        def leave_out(directory: str, names: list[str]) -> list[str]:
            if from_stage is not None:
                return []
            base = Path(directory).relative_to(self.context)
            return [n for n in names if ignored((base / n).as_posix())]

        for source in sources:
            if from_stage is not None:
                origin = from_stage.host(source)
            else:
                assert not ignored(posixpath.normpath(source)), f"{source} is ignored"
                origin = self.context / source
            if origin.is_dir():
                shutil.copytree(
                    origin,
                    target,
                    symlinks=True,
                    dirs_exist_ok=True,
                    ignore=leave_out,
                    # A stage's files are linked, not copied: the venvs are
                    # large, and no later step writes into them.
                    copy_function=link_or_copy if from_stage else shutil.copy2,
                )
            else:
                destination = target / origin.name if into_directory else target
                destination.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(origin, destination)

    def _run(
        self, rest: str, *, fs: Filesystem, cwd: Path, env: dict[str, str]
    ) -> None:
        if rest.startswith("["):
            argv = [fs.rewrite(word) for word in json.loads(rest)]
            words = argv
        else:
            argv = ["/bin/sh", "-c", fs.rewrite(rest)]
            words = argv[2:]
        # Whatever the step writes must land in the replay's directories.
        for path in re.findall(r"(?<![\w.:/-])/[\w./-]+", " ".join(words)):
            assert path.startswith(str(self.into)), f"RUN {rest}: {path} is not mapped"
        result = subprocess.run(
            argv,
            cwd=cwd,
            env=env,
            capture_output=True,
            text=True,
            check=False,
            timeout=RUN_STEP_SECONDS,
        )
        assert result.returncode == 0, (
            f"RUN {rest}\nfailed with {result.returncode}:\n{result.stderr[-3000:]}"
        )


# --- fixtures -------------------------------------------------------------------


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Image]]:
    """Both images, replayed side by side (mostly waiting on pip), and removed
    afterwards: their venvs take some 300 MB."""
    into = tmp_path_factory.mktemp("images")
    names = ("Dockerfile.sidecar", "Dockerfile.webhook")
    try:
        with ThreadPoolExecutor(max_workers=len(names)) as pool:
            builds = {
                name: pool.submit(Replay(REPO / name, into / name).build)
                for name in names
            }
            built = {name: build.result() for name, build in builds.items()}
        yield built
    finally:
        shutil.rmtree(into, ignore_errors=True)


@pytest.fixture(scope="module")
def sidecar_image(images: dict[str, Image]) -> Image:
    return images["Dockerfile.sidecar"]


@pytest.fixture(scope="module")
def webhook_image(images: dict[str, Image]) -> Image:
    return images["Dockerfile.webhook"]


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Processes]:
    started = Processes(tmp_path)
    yield started
    started.stop_all()


FIND_MODULES = """
import importlib.util, json, sys
found = {}
for name in sys.argv[1:]:
    try:
        spec = importlib.util.find_spec(name)
    except ModuleNotFoundError:
        spec = None
    found[name] = spec.origin if spec else None
print(json.dumps(found))
"""

DISTRIBUTIONS = """
import importlib.metadata, json
print(json.dumps([d.metadata["Name"] for d in importlib.metadata.distributions()]))
"""


def modules(image: Image, *names: str) -> dict[str, str | None]:
    result = image.python(FIND_MODULES, *names)
    assert result.returncode == 0, result.stderr
    found: dict[str, str | None] = json.loads(result.stdout)
    return found


def distributions(image: Image) -> set[str]:
    result = image.python(DISTRIBUTIONS)
    assert result.returncode == 0, result.stderr
    return {normalized(name) for name in json.loads(result.stdout)}


def webhook_only_requirements() -> set[str]:
    webhook = {normalized(r) for r in PYPROJECT["project"]["dependencies"]}
    sidecar = {
        normalized(r) for r in PYPROJECT["project"]["optional-dependencies"]["sidecar"]
    }
    return webhook - sidecar


# --- the sidecar image ----------------------------------------------------------


def test_sidecar_image_entry_point_prints_its_help(sidecar_image: Image) -> None:
    result = sidecar_image.run([*sidecar_image.entrypoint, "--help"])
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: python -m sidecar")
    assert "WI_KEY_FILE" in result.stdout


def test_sidecar_image_holds_its_packages_and_never_the_webhook(
    sidecar_image: Image,
) -> None:
    app = sidecar_image.workdir
    found = modules(sidecar_image, "sidecar", "oidc_tokens", "webhook")
    assert found["sidecar"] == str(app / "sidecar" / "__init__.py")
    assert found["oidc_tokens"] == str(app / "oidc_tokens" / "__init__.py")
    assert found["webhook"] is None
    result = sidecar_image.python("import webhook")
    assert result.returncode == 1
    assert "ModuleNotFoundError: No module named 'webhook'" in result.stderr


def test_sidecar_image_installs_the_sidecar_extra_and_no_webhook_dependency(
    sidecar_image: Image,
) -> None:
    installed = distributions(sidecar_image)
    extra = {
        normalized(r) for r in PYPROJECT["project"]["optional-dependencies"]["sidecar"]
    }
    assert extra <= installed
    grown = installed & webhook_only_requirements()
    assert not grown, f"the sidecar image holds webhook dependencies {grown}"


def test_sidecar_image_runs_a_key_mode_sidecar(
    sidecar_image: Image, processes: Processes, tmp_path: Path
) -> None:
    key_file = tmp_path / "signing" / "key.pem"
    key_file.parent.mkdir()
    subprocess.run(
        [sys.executable, "-m", "webhook", "issuer", "keygen", "--out", str(key_file)],
        cwd=REPO,
        check=True,
        capture_output=True,
        timeout=60,
    )
    token_dir = tmp_path / "tokens"
    token_dir.mkdir()
    listen = f"{LOOPBACK}:{free_port()}"
    processes.start(
        "sidecar",
        sidecar_image.entrypoint,
        env=sidecar_image.env(
            WI_MODE="key",
            WI_ISSUER=ISSUER,
            WI_KEY_FILE=str(key_file),
            WI_TOKEN_DIR=str(token_dir),
            WI_AWS_IDENTITY="demo-s3",
            WI_AWS_EXPIRATION_SECONDS="600",
            WI_PROJECT="demo",
            WI_NAMESPACE="demo-app",
            WI_POD_NAME="reports-0",
            WI_LISTEN=listen,
        ),
        cwd=sidecar_image.workdir,
    )

    wait_until(
        lambda: http(f"http://{listen}/readyz")[0] == 200,
        timeout=30,
        what="the sidecar's first token",
        details=processes.report,
        processes=processes,
    )
    key = load_pem_private_key(key_file.read_bytes(), password=None)
    claims = jwt.decode(
        (token_dir / "aws-token").read_text(),
        key.public_key(),
        algorithms=["RS256"],
        audience="sts.amazonaws.com",
        issuer=ISSUER,
    )
    assert claims["sub"].startswith("demo-s3:demo:demo-app:")
    status, body = http(f"http://{listen}/metrics")
    assert status == 200
    assert 'workload_identity_sidecar_token_valid{provider="aws"} 1.0' in body.decode()
    assert processes.stop("sidecar") == 0, processes.report()


# --- the webhook image ----------------------------------------------------------


def test_webhook_image_entry_point_prints_its_help(webhook_image: Image) -> None:
    result = webhook_image.run([*webhook_image.entrypoint, "--help"])
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: python -m webhook")
    assert webhook_image.cmd == ["serve"]


def test_webhook_image_holds_its_packages_and_dependencies_and_never_the_sidecar(
    webhook_image: Image,
) -> None:
    app = webhook_image.workdir
    found = modules(webhook_image, "webhook", "oidc_tokens", "sidecar")
    assert found["webhook"] == str(app / "webhook" / "__init__.py")
    assert found["oidc_tokens"] == str(app / "oidc_tokens" / "__init__.py")
    assert found["sidecar"] is None
    required = {normalized(r) for r in PYPROJECT["project"]["dependencies"]}
    assert required <= distributions(webhook_image)


def test_webhook_image_serves_with_its_default_command(
    webhook_image: Image, processes: Processes, tmp_path: Path
) -> None:
    port, metrics = free_port(), free_port()
    argv = [
        *webhook_image.entrypoint,
        *webhook_image.cmd,
        "--identities", str(DEPLOY / "examples" / "identities.yaml"),
        "--namespaces", str(DEPLOY / "examples" / "namespaces.yaml"),
        "--state-dir", str(tmp_path / "state"),
        "--listen", f"{LOOPBACK}:{port}",
        "--metrics-listen", f"{LOOPBACK}:{metrics}",
    ]  # fmt: skip
    processes.start("webhook", argv, env=webhook_image.env(), cwd=webhook_image.workdir)

    def metrics_text() -> str:
        status, body = http(f"http://{LOOPBACK}:{metrics}/metrics")
        return body.decode() if status == 200 else ""

    text = wait_until(
        metrics_text,
        timeout=30,
        what="the webhook's metrics",
        details=processes.report,
        processes=processes,
    )
    assert 'workload_identity_identities_loaded{provider="aws"} 1.0' in text
    status, body = http(
        f"https://{LOOPBACK}:{port}/mutate",
        body=(DEPLOY / "examples" / "admission-review.json").read_bytes(),
        headers={"Content-Type": "application/json"},
        context=ssl.create_default_context(cafile=tmp_path / "state" / "tls.crt"),
    )
    assert status == 200, body
    response = json.loads(body)["response"]
    assert response["allowed"] is True
    assert response["patchType"] == "JSONPatch"
    assert processes.stop("webhook") == 0, processes.report()


def test_bootstrap_jobs_run_their_script_with_the_webhook_image(
    webhook_image: Image,
) -> None:
    """The Jobs run `python <script>` from a ConfigMap in the webhook image:
    `python` must be the image's venv, which has everything the script imports."""
    commands = set()
    for obj in of_kind(render("overlays/self-signed"), "Job"):
        for template in pod_templates(obj):
            spec = template["spec"]
            for c in spec["containers"]:
                if c["image"].startswith("workload-identity-webhook:"):
                    commands.add(tuple(container(spec, c["name"])["command"]))
    assert commands, "no Job runs the webhook image"
    for interpreter, script in commands:
        python = shutil.which(interpreter, path=webhook_image.env()["PATH"])
        assert python == webhook_image.entrypoint[0], "python is not the image's"
        # The ConfigMap holds the script of deploy/components/bootstrap.
        local = DEPLOY / "components" / "bootstrap" / PurePosixPath(script).name
        result = webhook_image.run([python, str(local), "--help"])
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith("usage:")
