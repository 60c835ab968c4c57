"""Adversarial AdmissionReviews: valid reviews with parts replaced by the wrong
type, huge arrays, deep nesting, odd unicode and enormous strings, or bodies
that are not JSON at all; and the check that each answer is a well-formed
AdmissionReview for that request, or a 4xx that says what is wrong."""

from __future__ import annotations

import base64
import copy
import json
from dataclasses import dataclass
from typing import Any, Final

import jsonpatch
from hypothesis import strategies as st

from tests.log_scan import secrets_in
from tests.reliability.webhook_rig import pod, review

Body = dict[str, Any]
Path_ = tuple[str | int, ...]

SUPPORTED: Final = ("admission.k8s.io/v1", "admission.k8s.io/v1beta1")

ODD_STRINGS: Final = [
    "", " ", "\x00", "\ud800", "\udfff", "\ufeff", "\u202e", "\u200b",
    "İ", "ß", "ﬀ", "𝔘𝔫𝔦𝔠𝔬𝔡𝔢", "\u0301" * 64, "🙂" * 16, "a/b", "~0~1", "..",
    ",", " , ,", "false", "FALSE", "null", "workloadidentity.dev/tags",
    "kube-system", "workload-identity-system", "payments", "aws", "gcp",
    "s3,bq,queue", "CREATE", "Pod", "windows", "Always", "/var/run/secrets",
]  # fmt: skip


@dataclass(frozen=True)
class Deep:
    """A value nested `depth` levels deep. It stays a placeholder here (no
    Python code could walk it without running out of stack) and becomes
    text only in the request body."""

    depth: int
    shape: str

    def text(self) -> str:
        if self.shape == "list":
            return "[" * self.depth + '"bottom"' + "]" * self.depth
        return '{"k":' * self.depth + '"bottom"' + "}" * self.depth


def _nest(depth: int, shape: str) -> Any:
    value: Any = "bottom"
    for _ in range(depth):
        value = [value] if shape == "list" else {"k": value}
    return value


def holds_deep(value: Any) -> bool:
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, Deep):
            return True
        if isinstance(item, dict):
            pending += item.values()
        elif isinstance(item, list):
            pending += item
    return False


def encode(value: Any, *, ensure_ascii: bool) -> bytes:
    """JSON text of `value`, Deep placeholders spelt out, as UTF-8 (lone
    surrogates passed through, which makes the bytes invalid UTF-8)."""
    deep: list[Deep] = []

    def placeholder(item: Any) -> str:
        if not isinstance(item, Deep):
            raise TypeError(f"cannot encode {type(item).__name__}")
        deep.append(item)
        return f"\0deep{len(deep) - 1}\0"

    text = json.dumps(value, ensure_ascii=ensure_ascii, default=placeholder)
    for index, item in enumerate(deep):
        text = text.replace(f'"\\u0000deep{index}\\u0000"', item.text(), 1)
    return text.encode("utf-8", "surrogatepass")


scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(ODD_STRINGS),
    st.text(max_size=40),
)
junk = st.one_of(
    st.recursive(
        scalars,
        lambda inner: st.one_of(
            st.lists(inner, max_size=4),
            st.dictionaries(
                st.one_of(st.text(max_size=8), st.sampled_from(ODD_STRINGS)),
                inner,
                max_size=4,
            ),
        ),
        max_leaves=12,
    ),
    st.builds(
        lambda text, n: text * n,
        st.sampled_from(["x", "é", ",", "\x00", "🙂", "a,"]),
        st.integers(0, 1_200_000),
    ),
    st.builds(lambda item, n: [item] * n, scalars, st.integers(0, 150_000)),
    st.builds(_nest, st.integers(1, 100), st.sampled_from(["list", "dict"])),
    st.builds(Deep, st.integers(100, 6_000), st.sampled_from(["list", "dict"])),
)


def base_reviews() -> list[Body]:
    many = pod(containers=3)
    many["spec"]["initContainers"] = [{"name": "init", "image": "busybox", "env": []}]
    many["spec"]["nodeSelector"] = {"kubernetes.io/os": "linux"}
    many["metadata"]["annotations"] = {
        "workloadidentity.dev/tags": "bq, queue",
        "workloadidentity.dev/skip-containers": "app-1",
    }
    return [
        review(pod(), uid="fuzz"),
        review(many, uid="fuzz"),
        review(pod("batch"), uid="fuzz", api_version="admission.k8s.io/v1beta1"),
        review(pod("plain"), uid="fuzz", operation="UPDATE"),
    ]


BASES: Final = base_reviews()


def paths(value: Any, prefix: Path_ = ()) -> list[Path_]:
    """Every place in a JSON value, the root included (long lists count as
    one place)."""
    found = [prefix]
    if isinstance(value, dict):
        for key, item in value.items():
            found += paths(item, (*prefix, key))
    elif isinstance(value, list) and len(value) <= 16:
        for index, item in enumerate(value):
            found += paths(item, (*prefix, index))
    return found


PLACES: Final = [(n, p) for n, base in enumerate(BASES) for p in paths(base)]


def _set(body: Any, place: Path_, value: Any, *, delete: bool) -> Any:
    if not place:
        return value
    parent = body
    for step in place[:-1]:
        parent = parent[step]
    if delete and isinstance(parent, dict):
        parent.pop(place[-1], None)
    else:
        parent[place[-1]] = value
    return body


@st.composite
def mutated_reviews(draw: st.DrawFn) -> Any:
    """A base review with one to four of its parts replaced, removed or
    joined by an unknown key."""
    base_index, _ = draw(st.sampled_from(PLACES))
    body: Any = copy.deepcopy(BASES[base_index])
    for _ in range(draw(st.integers(1, 4))):
        candidates = paths(body)
        place = draw(st.sampled_from(candidates))
        action = draw(st.sampled_from(["replace", "replace", "delete", "add"]))
        value = draw(junk)
        try:
            if action == "add":
                target = body
                for step in place:
                    target = target[step]
                if isinstance(target, dict):
                    target[draw(st.sampled_from(ODD_STRINGS))] = value
                    continue
            body = _set(body, place, value, delete=action == "delete")
        except (KeyError, IndexError, TypeError):
            continue
    return body


@st.composite
def request_bodies(draw: st.DrawFn) -> tuple[bytes, Any]:
    """(bytes to send, the JSON value they encode or None for non-JSON)."""
    kind = draw(st.sampled_from(["mutated"] * 8 + ["raw", "truncated"]))
    if kind == "raw":
        return draw(st.binary(max_size=2048)), None
    value = draw(mutated_reviews())
    data = encode(value, ensure_ascii=draw(st.booleans()))
    if kind == "truncated":
        return data[: draw(st.integers(0, max(len(data) - 1, 0)))], None
    return data, value


class BadAnswer(AssertionError):
    """The webhook answered something the API server could not use."""


def check_answer(status: int, answer: bytes, sent: Any) -> str:
    """The kind of answer, or BadAnswer; `sent` is the JSON value sent (None
    when the body was not JSON)."""
    if secrets_in(answer.decode("utf-8", "replace")):
        raise BadAnswer("the answer holds something shaped like a secret")
    if 400 <= status < 500:
        error = json.loads(answer).get("error")
        if not isinstance(error, str) or not error:
            raise BadAnswer(f"{status} without an error message")
        return f"http_{status}"
    if status != 200:
        raise BadAnswer(f"status {status}: {answer[:300]!r}")
    review_out = json.loads(answer)
    request = sent.get("request") if isinstance(sent, dict) else None
    if not isinstance(request, dict):
        raise BadAnswer("200 for a body without a request")
    if (
        review_out.get("apiVersion") != sent.get("apiVersion")
        or review_out.get("apiVersion") not in SUPPORTED
    ):
        raise BadAnswer(f"apiVersion {review_out.get('apiVersion')!r} not echoed")
    if review_out.get("kind") != "AdmissionReview":
        raise BadAnswer("kind is not AdmissionReview")
    response = review_out.get("response")
    if not isinstance(response, dict) or response.get("uid") != request.get("uid"):
        raise BadAnswer("the uid is not echoed")
    if not isinstance(response.get("allowed"), bool):
        raise BadAnswer("allowed is not a boolean")
    if not response["allowed"]:
        code = (response.get("status") or {}).get("code")
        if not isinstance(code, int) or code >= 500:
            raise BadAnswer(f"refused with an internal error: {response.get('status')}")
        return "refused"
    warnings = response.get("warnings", [])
    if not isinstance(warnings, list) or not all(isinstance(w, str) for w in warnings):
        raise BadAnswer("warnings are not a list of strings")
    if "patch" not in response:
        return "allowed"
    if response.get("patchType") != "JSONPatch":
        raise BadAnswer("a patch without patchType JSONPatch")
    patch = json.loads(base64.b64decode(response["patch"], validate=True))
    if secrets_in(json.dumps(patch)):
        raise BadAnswer("the patch holds something shaped like a secret")
    if holds_deep(request.get("object")):
        return "patched"  # too deep to rebuild here; the webhook coped
    pod_copy = copy.deepcopy(request.get("object"))
    try:
        jsonpatch.apply_patch(pod_copy, patch)
    except Exception as exc:
        raise BadAnswer(f"the patch does not apply to the pod: {exc!r}") from exc
    return "patched"
