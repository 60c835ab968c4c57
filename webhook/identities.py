"""The WorkloadIdentity resource: parsed, validated, immutable.

Validation mirrors the CRD's OpenAPI schema so that a file and a cluster reject
the same documents, and every error names the document and the field.
"""

from __future__ import annotations

import difflib
import functools
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Final, TypeVar

from oidc_tokens.claims import MAX_LIFETIME_SECONDS, MIN_LIFETIME_SECONDS
from oidc_tokens.gcp import provider_audience
from webhook.documents import DocumentFileError, read_documents

API_VERSION: Final = "workloadidentity.dev/v1alpha1"
KIND: Final = "WorkloadIdentity"
DEFAULT_AWS_AUDIENCE: Final = "sts.amazonaws.com"
DEFAULT_EXPIRATION_SECONDS: Final = 3600

_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")
_ROLE_ARN = re.compile(r"^arn:aws[a-z-]*:iam::\d{12}:role/[\w+=,.@/-]{1,512}$")
_REGION = re.compile(r"^[a-z]{2}(-[a-z]+)+-\d$")
_PROJECT_NUMBER = re.compile(r"^\d{1,20}$")
_GCP_ID = re.compile(r"^[a-z0-9-]{4,32}$")
_SA_EMAIL = re.compile(
    r"^[a-z][-a-z0-9]{4,28}[a-z0-9]@[-a-z0-9.]+\.iam\.gserviceaccount\.com$"
)
_GCP_PROJECT_ID = re.compile(r"^[a-z][-a-z0-9]{4,28}[a-z0-9]$")
# Label values: the project names that namespaces can carry.
_LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$")


class Provider(StrEnum):
    AWS = "aws"
    GCP = "gcp"


T = TypeVar("T")


class IdentityError(ValueError):
    """A WorkloadIdentity document that cannot be used, and why.

    `field_path` and `message` are the first fault found; `others` holds the
    faults of the document's other parts, so that one edit can fix them all.
    """

    def __init__(
        self,
        document: str,
        field_path: str,
        message: str,
        others: tuple[IdentityError, ...] = (),
    ) -> None:
        self.document = document
        self.field_path = field_path
        self.message = message
        self.others = others
        super().__init__(f"WorkloadIdentity {document}: {self.faults()}")

    def faults(self) -> str:
        """Every fault as `field: what is wrong`, separated by semicolons."""
        return "; ".join(
            f"{error.field_path}: {error.message}" for error in (self, *self.others)
        )


@dataclass(frozen=True, slots=True)
class Restriction:
    """One scope restriction. Enabled with no names admits nothing."""

    restrict: bool
    names: tuple[str, ...] = ()
    match_all: bool = False


@dataclass(frozen=True, slots=True)
class Scope:
    projects: Restriction = Restriction(restrict=True)
    tags: Restriction = Restriction(restrict=False)


@dataclass(frozen=True, slots=True)
class AwsSpec:
    role_arn: str
    region: str = ""
    audience: str = DEFAULT_AWS_AUDIENCE


@dataclass(frozen=True, slots=True)
class GcpSpec:
    project_number: str
    pool_id: str
    provider_id: str
    service_account_email: str = ""
    project_id: str = ""

    @property
    def audience(self) -> str:
        return provider_audience(self.project_number, self.pool_id, self.provider_id)


@dataclass(frozen=True, slots=True)
class Identity:
    name: str
    provider: Provider
    scope: Scope | None
    """None when the document has no `scope`: such an identity matches no pod."""
    aws: AwsSpec | None = None
    gcp: GcpSpec | None = None
    expiration_seconds: int = DEFAULT_EXPIRATION_SECONDS
    description: str = ""
    permissions: Mapping[str, Any] = field(default_factory=dict)
    generation: int = 0

    @property
    def audience(self) -> str:
        if self.aws is not None:
            return self.aws.audience
        assert self.gcp is not None
        return self.gcp.audience


class _Reader:
    """Typed access to one document that names the field in every error."""

    def __init__(self, document: str) -> None:
        self.document = document

    def fail(self, path: str, message: str) -> IdentityError:
        return IdentityError(self.document, path, message)

    def mapping(
        self, value: Any, path: str, *, required: bool = False
    ) -> dict[str, Any]:
        if value is None:
            if required:
                raise self.fail(path, "is required")
            return {}
        if not isinstance(value, dict):
            raise self.fail(path, f"must be a mapping, not {type(value).__name__}")
        return value

    def string(
        self,
        parent: Mapping[str, Any],
        key: str,
        path: str,
        *,
        pattern: re.Pattern[str] | None = None,
        expected: str = "",
        required: bool = False,
        default: str = "",
    ) -> str:
        value = parent.get(key)
        if value is None or value == "":
            if required:
                raise self.fail(
                    f"{path}.{key}", f"is required: {expected}".rstrip(": ")
                )
            return default
        if isinstance(value, bool) or not isinstance(value, str | int):
            raise self.fail(
                f"{path}.{key}", f"must be a string, not {type(value).__name__}"
            )
        text = str(value)
        if pattern is not None and not pattern.fullmatch(text):
            raise self.fail(
                f"{path}.{key}", f"{text!r} is not valid: expected {expected}"
            )
        return text

    def boolean(
        self, parent: Mapping[str, Any], key: str, path: str, default: bool
    ) -> bool:
        value = parent.get(key, default)
        if not isinstance(value, bool):
            raise self.fail(f"{path}.{key}", f"must be true or false, not {value!r}")
        return value

    def names(self, parent: Mapping[str, Any], path: str) -> tuple[str, ...]:
        value = parent.get("names", [])
        if value is None:
            return ()
        if not isinstance(value, list):
            raise self.fail(f"{path}.names", "must be a list of strings")
        result: list[str] = []
        for index, item in enumerate(value):
            if (
                not isinstance(item, str)
                or not _LABEL_VALUE.fullmatch(item)
                or not item
            ):
                raise self.fail(
                    f"{path}.names[{index}]",
                    f"{item!r} is not a valid name: use letters, digits, '-', '_' "
                    "or '.', at most 63 characters",
                )
            result.append(item)
        duplicates = sorted({n for n in result if result.count(n) > 1})
        if duplicates:
            raise self.fail(f"{path}.names", f"lists {duplicates} more than once")
        return tuple(sorted(result))


def _restriction(
    reader: _Reader, raw: Any, path: str, *, default_restrict: bool
) -> Restriction:
    body = reader.mapping(raw, path)
    unknown = set(body) - {"restrict", "names", "matchAll"}
    if unknown:
        raise reader.fail(
            path,
            # key=str: a YAML key need not be a string, and a mixed set sorts.
            f"unknown field(s) {sorted(unknown, key=str)}: expected restrict, names, "
            "matchAll",
        )
    return Restriction(
        restrict=reader.boolean(body, "restrict", path, default_restrict),
        names=reader.names(body, path),
        match_all=reader.boolean(body, "matchAll", path, False),
    )


def _scope(reader: _Reader, raw: Any) -> Scope | None:
    if raw is None:
        return None
    body = reader.mapping(raw, "spec.scope")
    unknown = set(body) - {"projects", "tags"}
    if unknown:
        raise reader.fail(
            "spec.scope",
            f"unknown field(s) {sorted(unknown, key=str)}: expected projects, tags",
        )
    projects = _restriction(
        reader, body.get("projects"), "spec.scope.projects", default_restrict=True
    )
    if projects.match_all:
        raise reader.fail(
            "spec.scope.projects.matchAll",
            "applies to tags only: a namespace has one project",
        )
    return Scope(
        projects=projects,
        tags=_restriction(
            reader, body.get("tags"), "spec.scope.tags", default_restrict=False
        ),
    )


def _aws(reader: _Reader, raw: Any) -> AwsSpec:
    body = reader.mapping(raw, "spec.aws", required=True)
    return AwsSpec(
        role_arn=reader.string(
            body,
            "roleArn",
            "spec.aws",
            pattern=_ROLE_ARN,
            required=True,
            expected="arn:aws:iam::<12-digit account>:role/<name>",
        ),
        region=reader.string(
            body,
            "region",
            "spec.aws",
            pattern=_REGION,
            expected="a region such as eu-west-1",
        ),
        audience=reader.string(
            body, "audience", "spec.aws", default=DEFAULT_AWS_AUDIENCE
        ),
    )


def _gcp(reader: _Reader, raw: Any) -> GcpSpec:
    body = reader.mapping(raw, "spec.gcp", required=True)
    return GcpSpec(
        project_number=reader.string(
            body,
            "projectNumber",
            "spec.gcp",
            pattern=_PROJECT_NUMBER,
            required=True,
            expected='the numeric project number, quoted, e.g. "123456789012"',
        ),
        pool_id=reader.string(
            body,
            "poolId",
            "spec.gcp",
            pattern=_GCP_ID,
            required=True,
            expected="the workload identity pool ID (4-32 of a-z, 0-9, -)",
        ),
        provider_id=reader.string(
            body,
            "providerId",
            "spec.gcp",
            pattern=_GCP_ID,
            required=True,
            expected="the pool's OIDC provider ID (4-32 of a-z, 0-9, -)",
        ),
        service_account_email=reader.string(
            body,
            "serviceAccountEmail",
            "spec.gcp",
            pattern=_SA_EMAIL,
            expected="NAME@PROJECT.iam.gserviceaccount.com",
        ),
        project_id=reader.string(
            body,
            "projectId",
            "spec.gcp",
            pattern=_GCP_PROJECT_ID,
            expected="a GCP project ID",
        ),
    )


def _expiration(reader: _Reader, spec: Mapping[str, Any]) -> int:
    token = reader.mapping(spec.get("token"), "spec.token")
    value = token.get("expirationSeconds", DEFAULT_EXPIRATION_SECONDS)
    if isinstance(value, bool) or not isinstance(value, int):
        raise reader.fail(
            "spec.token.expirationSeconds", f"must be an integer, not {value!r}"
        )
    if not MIN_LIFETIME_SECONDS <= value <= MAX_LIFETIME_SECONDS:
        raise reader.fail(
            "spec.token.expirationSeconds",
            f"{value} is out of range: use {MIN_LIFETIME_SECONDS} to {MAX_LIFETIME_SECONDS}",
        )
    return value


SPEC_FIELDS: Final = {
    "spec": ("description", "provider", "aws", "gcp", "scope", "token", "permissions"),
    "spec.aws": ("roleArn", "region", "audience"),
    "spec.gcp": (
        "projectNumber", "poolId", "providerId", "serviceAccountEmail", "projectId",
    ),
    "spec.token": ("expirationSeconds",),
    "spec.permissions": ("mode", "policyDocument", "permissions"),
}  # fmt: skip
"""The fields the CRD declares (deploy/crd/workloadidentity.yaml). The API
server drops any other; a file must not carry one either, since a misspelt
`audience` would silently fall back to the default."""

PERMISSION_MODES: Final = ("managed", "existing")


def _known_fields(reader: _Reader, raw: Any, path: str) -> None:
    if not isinstance(raw, Mapping):
        return  # its own reader says what is wrong with it
    allowed = SPEC_FIELDS[path]
    unknown = sorted((k for k in raw if k not in allowed), key=str)
    if not unknown:
        return
    hints = [
        f"{k!r} (did you mean {close[0]!r}?)" if close else repr(k)
        for k in unknown
        for close in [difflib.get_close_matches(str(k), allowed, n=1)]
    ]
    raise reader.fail(
        path, f"unknown field(s) {', '.join(hints)}: expected {', '.join(allowed)}"
    )


def _permissions(reader: _Reader, raw: Any) -> dict[str, Any]:
    body = reader.mapping(raw, "spec.permissions")
    _known_fields(reader, body, "spec.permissions")
    mode = body.get("mode")
    if mode is not None and mode not in PERMISSION_MODES:
        raise reader.fail(
            "spec.permissions.mode", f"is {mode!r}: expected managed or existing"
        )
    return body


def _provider(reader: _Reader, spec: Mapping[str, Any]) -> Provider:
    provider_text = spec.get("provider")
    try:
        provider = Provider(str(provider_text))
    except ValueError:
        raise reader.fail(
            "spec.provider", f"is {provider_text!r}: expected aws or gcp"
        ) from None
    other = Provider.GCP if provider is Provider.AWS else Provider.AWS
    if spec.get(other.value) is not None:
        raise reader.fail(
            f"spec.{other.value}", f"must not be set for provider {provider.value}"
        )
    return provider


def parse_identity(document: Mapping[str, Any]) -> Identity:
    """Validate one WorkloadIdentity document; raise IdentityError naming every
    faulty field (the first, and the others in `others`)."""
    metadata = document.get("metadata") if isinstance(document, Mapping) else None
    raw_name = metadata.get("name") if isinstance(metadata, Mapping) else None
    reader = _Reader(repr(raw_name) if raw_name else "(unnamed)")
    if document.get("kind") != KIND:
        raise reader.fail("kind", f"is {document.get('kind')!r}, expected {KIND}")
    if document.get("apiVersion") != API_VERSION:
        raise reader.fail(
            "apiVersion", f"is {document.get('apiVersion')!r}, expected {API_VERSION}"
        )
    # From here on every part is read even after a fault, so that an admin
    # sees all the faults of the document at once.
    faults: list[IdentityError] = []

    def part(read: Callable[[], T]) -> T | None:
        try:
            return read()
        except IdentityError as error:
            faults.append(error)
            return None

    if isinstance(raw_name, str) and _NAME.fullmatch(raw_name):
        reader.document = raw_name
    else:
        faults.append(
            reader.fail(
                "metadata.name", "must be a lowercase DNS name (a-z, 0-9, '-', '.')"
            )
        )
    spec = reader.mapping(document.get("spec"), "spec", required=True)
    part(lambda: _known_fields(reader, spec, "spec"))
    provider = part(lambda: _provider(reader, spec))
    for block in ("aws", "gcp", "token"):
        part(functools.partial(_known_fields, reader, spec.get(block), f"spec.{block}"))
    permissions = part(lambda: _permissions(reader, spec.get("permissions")))
    scope = part(lambda: _scope(reader, spec.get("scope")))
    aws = (
        part(lambda: _aws(reader, spec.get("aws")))
        if provider is Provider.AWS
        else None
    )
    gcp = (
        part(lambda: _gcp(reader, spec.get("gcp")))
        if provider is Provider.GCP
        else None
    )
    expiration = part(lambda: _expiration(reader, spec))
    description = part(lambda: reader.string(spec, "description", "spec"))
    if faults:
        first, *others = faults
        raise IdentityError(
            first.document, first.field_path, first.message, tuple(others)
        )
    generation = metadata.get("generation", 0) if isinstance(metadata, Mapping) else 0
    # Without faults every part was read.
    assert isinstance(raw_name, str)
    assert provider is not None
    assert expiration is not None
    assert description is not None
    return Identity(
        name=raw_name,
        provider=provider,
        scope=scope,
        aws=aws,
        gcp=gcp,
        expiration_seconds=expiration,
        description=description,
        permissions=permissions or {},
        generation=generation if isinstance(generation, int) else 0,
    )


@dataclass(frozen=True, slots=True)
class LoadResult:
    identities: tuple[Identity, ...]
    errors: tuple[IdentityError, ...]


def parse_identities(documents: Iterable[Any]) -> LoadResult:
    """Parse many documents; an invalid one is reported and never hides the rest."""
    identities: dict[str, Identity] = {}
    errors: list[IdentityError] = []
    for index, document in enumerate(documents):
        if document is None:
            continue
        if not isinstance(document, Mapping):
            errors.append(
                IdentityError(f"#{index + 1}", "(document)", "is not a mapping")
            )
            continue
        if document.get("kind") == "List" and isinstance(document.get("items"), list):
            nested = parse_identities(document["items"])
            identities.update({i.name: i for i in nested.identities})
            errors.extend(nested.errors)
            continue
        try:
            identity = parse_identity(document)
        except IdentityError as error:
            errors.append(error)
            continue
        if identity.name in identities:
            errors.append(
                IdentityError(
                    identity.name,
                    "metadata.name",
                    "is defined twice; names must be unique",
                )
            )
            continue
        identities[identity.name] = identity
    return LoadResult(
        tuple(sorted(identities.values(), key=lambda i: i.name)), tuple(errors)
    )


class IdentityFileError(DocumentFileError):
    """An identities file that cannot be read at all."""


def load_identity_file(path: str) -> LoadResult:
    documents = read_documents(path, what="identities file", error=IdentityFileError)
    return parse_identities(documents)
