"""What `install` installed, per identity, and where that is recorded.

In a cluster the record lives in the WorkloadIdentity's `.status` (written
with `webhook.status`); outside one, in a local JSON state file (mode 0600).
Both sit behind `StatusStore`, so install and status never care which one
they write to.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Final, Protocol

STATE_KIND: Final = "InstallState"
STATE_API_VERSION: Final = "workloadidentity.dev/v1alpha1"


def now_text() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True, slots=True)
class Failure:
    """The last install attempt that failed, and for which spec."""

    at: str
    spec_hash: str
    generation: int
    message: str


@dataclass(frozen=True, slots=True)
class InstallRecord:
    identity: str
    provider: str
    installed: Mapping[str, Any] | None = None
    """The install snapshot last applied successfully."""
    installed_hash: str = ""
    """`snapshot_hash` of `installed`: issuer, cloud target and permissions."""
    installed_permissions_hash: str = ""
    """`webhook.status.permissions_hash(spec.permissions)` as installed: what a
    cluster keeps in `.status.installedPermissionsHash`."""
    installed_generation: int = 0
    installed_at: str = ""
    setup: Mapping[str, Any] = field(default_factory=dict)
    """Provider setup: automatic or manual, and the cloud resource."""
    failure: Failure | None = None

    def succeeded(
        self,
        snapshot: Mapping[str, Any],
        spec_hash: str,
        permissions_hash: str,
        generation: int,
        setup: Mapping[str, Any],
    ) -> InstallRecord:
        return replace(
            self,
            installed=dict(snapshot),
            installed_hash=spec_hash,
            installed_permissions_hash=permissions_hash,
            installed_generation=generation,
            installed_at=now_text(),
            setup=dict(setup),
            failure=None,
        )

    def failed(self, spec_hash: str, generation: int, message: str) -> InstallRecord:
        return replace(
            self, failure=Failure(now_text(), spec_hash, generation, message)
        )

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "provider": self.provider,
            "installed": self.installed,
            "installedSpecHash": self.installed_hash,
            "installedPermissionsHash": self.installed_permissions_hash,
            "installedGeneration": self.installed_generation,
            "installedAt": self.installed_at,
            "providerSetup": dict(self.setup),
        }
        if self.failure is not None:
            body["failure"] = {
                "at": self.failure.at,
                "specHash": self.failure.spec_hash,
                "generation": self.failure.generation,
                "message": self.failure.message,
            }
        return body

    @classmethod
    def from_json(cls, name: str, body: Mapping[str, Any]) -> InstallRecord:
        failure = body.get("failure")
        return cls(
            identity=name,
            provider=str(body.get("provider", "")),
            installed=body.get("installed"),
            installed_hash=str(body.get("installedSpecHash", "")),
            installed_permissions_hash=str(body.get("installedPermissionsHash", "")),
            installed_generation=int(body.get("installedGeneration", 0)),
            installed_at=str(body.get("installedAt", "")),
            setup=dict(body.get("providerSetup") or {}),
            failure=Failure(
                at=str(failure.get("at", "")),
                spec_hash=str(failure.get("specHash", "")),
                generation=int(failure.get("generation", 0)),
                message=str(failure.get("message", "")),
            )
            if isinstance(failure, Mapping)
            else None,
        )


class RecordError(Exception):
    """What install did for one identity could not be recorded; the others
    can still be. The message says why and what to do."""


class IdentityGone(RecordError):
    """The identity was deleted while install ran: there is nothing to record."""


class StatusStore(Protocol):
    """Where install records what it did: a state file, or `.status` in a cluster.

    `save` raises RecordError when one identity's record cannot be written,
    and StateFileError when nothing can be (install then stops).
    """

    def load(self) -> dict[str, InstallRecord]: ...

    def save(self, record: InstallRecord) -> None: ...


class StateFileError(ValueError):
    """A state file that cannot be read or written; the message says what to do."""


class LocalStateFile:
    """A JSON file readable by its owner only, replaced atomically on write."""

    def __init__(self, path: str) -> None:
        self.path = path

    def load(self) -> dict[str, InstallRecord]:
        try:
            with open(self.path, encoding="utf-8") as stream:
                body = json.load(stream)
        except FileNotFoundError:
            return {}
        except OSError as exc:
            raise StateFileError(
                f"cannot read state file {self.path}: {exc.strerror}"
            ) from exc
        except ValueError as exc:
            raise StateFileError(
                f"state file {self.path} is not JSON ({exc}); move it away to start afresh"
            ) from exc
        if not isinstance(body, dict) or body.get("kind") != STATE_KIND:
            raise StateFileError(
                f"{self.path} is not a workload-identity state file; "
                "pass another --state-file"
            )
        identities = body.get("identities") or {}
        return {
            name: InstallRecord.from_json(name, record)
            for name, record in identities.items()
            if isinstance(record, Mapping)
        }

    def save(self, record: InstallRecord) -> None:
        records = self.load()
        records[record.identity] = record
        body = {
            "apiVersion": STATE_API_VERSION,
            "kind": STATE_KIND,
            "identities": {name: records[name].to_json() for name in sorted(records)},
        }
        directory = os.path.dirname(os.path.abspath(self.path))
        try:
            os.makedirs(directory, exist_ok=True)
            descriptor, temporary = tempfile.mkstemp(dir=directory, prefix=".state-")
        except OSError as exc:
            raise StateFileError(
                f"cannot write state file {self.path}: {exc.strerror}"
            ) from exc
        try:
            with os.fdopen(descriptor, "w", encoding="utf-8") as stream:
                json.dump(body, stream, indent=2, sort_keys=True)
                stream.write("\n")
                stream.flush()
                os.fsync(stream.fileno())
            os.chmod(temporary, 0o600)
            os.replace(temporary, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            raise
