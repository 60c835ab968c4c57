"""Reading YAML files of Kubernetes-style documents (one or many per file)."""

from __future__ import annotations

from typing import Any

import yaml


class DocumentFileError(ValueError):
    """A file of documents that cannot be read or parsed; says which and why."""


def read_documents(
    path: str, *, what: str, error: type[DocumentFileError] = DocumentFileError
) -> list[Any]:
    """Every document in the YAML file at `path`; `what` names it in errors."""
    try:
        with open(path, encoding="utf-8") as stream:
            return list(yaml.safe_load_all(stream))
    except OSError as exc:
        raise error(f"cannot read {what} {path}: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise error(f"{what} {path} is not valid YAML: {exc}") from exc
