"""JSON Patch operations built by hand, with RFC 6901 escaping."""

from __future__ import annotations

from typing import Any, TypeAlias

Op: TypeAlias = dict[str, Any]


def escape(token: str) -> str:
    """RFC 6901: `~` becomes `~0` first, then `/` becomes `~1`."""
    if "~" not in token and "/" not in token:
        return token  # nearly every token: no copies made
    return token.replace("~", "~0").replace("/", "~1")


def path(*tokens: str | int) -> str:
    # Called for every operation of every patch: a list, not a generator, and
    # indices need no escaping.
    return "".join([f"/{escape(t)}" if isinstance(t, str) else f"/{t}" for t in tokens])


def add(where: str, value: Any) -> Op:
    return {"op": "add", "path": where, "value": value}


def replace(where: str, value: Any) -> Op:
    return {"op": "replace", "path": where, "value": value}


def remove(where: str) -> Op:
    return {"op": "remove", "path": where}
