"""Scope rules: does an identity serve a pod, and which one wins per provider.

Rules (DESIGN.md): the project and tag restrictions combine with AND; a
disabled restriction admits everything, an enabled one with no names admits
nothing; an identity without `scope` matches no pod; among the matches of one
provider the first name in code-point order wins.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final

from webhook.identities import Identity, Provider

TAGS_ANNOTATION: Final = "workloadidentity.dev/tags"


def pod_tags(annotations: object) -> frozenset[str]:
    """Comma-separated tags, whitespace trimmed, empty entries ignored."""
    if not isinstance(annotations, Mapping):
        return frozenset()
    raw = annotations.get(TAGS_ANNOTATION)
    if not isinstance(raw, str):
        return frozenset()
    return frozenset(tag.strip() for tag in raw.split(",") if tag.strip())


@dataclass(frozen=True, slots=True)
class Verdict:
    identity: str
    provider: Provider
    matched: bool
    reason: str


def evaluate(identity: Identity, project: str | None, tags: frozenset[str]) -> Verdict:
    """Whether `identity` serves a pod of `project` with `tags`, and why."""

    def no(reason: str) -> Verdict:
        return Verdict(identity.name, identity.provider, False, reason)

    scope = identity.scope
    if scope is None:
        return no("the identity has no scope, so it serves no project")
    if project is None:
        return no(
            f"the namespace has no {'workloadidentity.dev/project'} label, so it is no project"
        )
    projects = scope.projects
    if projects.restrict and not projects.names:
        return no(
            "the project restriction lists no project names, so it admits no project"
        )
    if projects.restrict and project not in projects.names:
        return no(
            f"project {project!r} is not in the project restriction {list(projects.names)}"
        )
    tag_rule = scope.tags
    if tag_rule.restrict:
        if not tag_rule.names:
            return no(
                "the tag restriction lists no tags (an empty tag list admits nothing)"
            )
        wanted = set(tag_rule.names)
        if tag_rule.match_all and not wanted <= tags:
            missing = sorted(wanted - tags)
            return no(
                f"the pod lacks tag(s) {missing} and the tag restriction needs all of them"
            )
        if not tag_rule.match_all and not wanted & tags:
            shown = sorted(tags) if tags else "none"
            return no(f"the pod's tags ({shown}) include none of {sorted(wanted)}")
    return Verdict(identity.name, identity.provider, True, "matched")


@dataclass(frozen=True, slots=True)
class Selection:
    """At most one identity per provider."""

    chosen: Mapping[Provider, Identity] = field(default_factory=dict)

    def get(self, provider: Provider) -> Identity | None:
        return self.chosen.get(provider)

    @property
    def empty(self) -> bool:
        return not self.chosen


def _key(identity: Identity) -> str:
    return identity.name


@dataclass(slots=True)
class _Bucket:
    """The identities of one provider whose project rule admits one project (or
    every project), filed by what their tag rule needs, each list in name order."""

    open: list[Identity] = field(default_factory=list)
    """Tag rule disabled: a candidate for every pod."""
    by_tag: dict[str, list[Identity]] = field(default_factory=dict)
    """Tag rule enabled: filed under each tag it names, because a pod with none
    of them cannot match (a rule naming no tag admits nothing: filed nowhere)."""

    def add(self, identity: Identity) -> None:
        assert identity.scope is not None
        rule = identity.scope.tags
        if not rule.restrict:
            self.open.append(identity)
            return
        for tag in dict.fromkeys(rule.names):
            self.by_tag.setdefault(tag, []).append(identity)

    def lists(self, tags: frozenset[str]) -> list[Sequence[Identity]]:
        found: list[Sequence[Identity]] = [self.open] if self.open else []
        return found + [self.by_tag[tag] for tag in tags if tag in self.by_tag]


def _distinct(ordered: Iterable[Identity]) -> Iterator[Identity]:
    """Drop repeats from a name-ordered merge (an identity filed under two of
    the pod's tags comes twice, one after the other)."""
    previous = None
    for identity in ordered:
        if identity is not previous:
            yield identity
        previous = identity


class IdentityIndex:
    """Identities indexed by provider and project, so a decision reads only the
    identities that could serve the pod's project, not every identity."""

    def __init__(self, identities: Iterable[Identity]) -> None:
        ordered = sorted(identities, key=_key)
        self.identities: tuple[Identity, ...] = tuple(ordered)
        self.by_name: dict[str, Identity] = {i.name: i for i in ordered}
        self._by_project: dict[tuple[Provider, str], list[Identity]] = {}
        self._all_projects: dict[Provider, list[Identity]] = {p: [] for p in Provider}
        self._tags: dict[str, frozenset[str]] = {}
        # The same identities again, split by tag, for select().
        self._buckets: dict[tuple[Provider, str | None], _Bucket] = {}
        for identity in ordered:
            scope = identity.scope
            if scope is None:
                continue
            if not scope.projects.restrict:
                self._all_projects[identity.provider].append(identity)
                self._bucket(identity.provider, None).add(identity)
                continue
            for project in scope.projects.names:
                self._by_project.setdefault((identity.provider, project), []).append(
                    identity
                )
                self._bucket(identity.provider, project).add(identity)

    def _bucket(self, provider: Provider, project: str | None) -> _Bucket:
        return self._buckets.setdefault((provider, project), _Bucket())

    def __len__(self) -> int:
        return len(self.identities)

    def candidates(self, provider: Provider, project: str) -> Iterable[Identity]:
        """In name order, the identities whose project rule admits `project`."""
        scoped: Sequence[Identity] = self._by_project.get((provider, project), ())
        return heapq.merge(scoped, self._all_projects[provider], key=_key)

    def _tag_candidates(
        self, provider: Provider, project: str, tags: frozenset[str]
    ) -> Iterable[Identity]:
        """In name order, the candidates whose tag rule could admit `tags`: every
        identity that can match, and few others, however many are loaded."""
        lists: list[Sequence[Identity]] = []
        for where in (project, None):
            bucket = self._buckets.get((provider, where))
            if bucket is not None:
                lists += bucket.lists(tags)
        if len(lists) <= 1:
            return lists[0] if lists else ()
        return _distinct(heapq.merge(*lists, key=_key))

    def known_tags(self, project: str) -> frozenset[str]:
        """Every tag named by an identity whose project rule admits `project`."""
        cached = self._tags.get(project)
        if cached is None:
            cached = frozenset(
                tag
                for provider in Provider
                for identity in self.candidates(provider, project)
                if identity.scope is not None
                for tag in identity.scope.tags.names
            )
            self._tags[project] = cached
        return cached

    def select(self, project: str | None, tags: frozenset[str]) -> Selection:
        if project is None:
            return Selection()
        chosen: dict[Provider, Identity] = {}
        for provider in Provider:
            for identity in self._tag_candidates(provider, project, tags):
                if evaluate(identity, project, tags).matched:
                    chosen[provider] = identity
                    break
        return Selection(chosen)

    def explain(self, project: str | None, tags: frozenset[str]) -> list[Verdict]:
        """Every identity with the reason it matched, lost the tie-break, or not."""
        verdicts: list[Verdict] = []
        winners: dict[Provider, str] = {}
        for identity in self.identities:
            verdict = evaluate(identity, project, tags)
            if verdict.matched:
                winner = winners.setdefault(identity.provider, identity.name)
                if winner != identity.name:
                    verdict = Verdict(
                        identity.name,
                        identity.provider,
                        False,
                        f"matched, but lost the tie-break to {winner!r}, which sorts first",
                    )
                else:
                    verdict = Verdict(
                        identity.name, identity.provider, True, "matched and selected"
                    )
            verdicts.append(verdict)
        return verdicts
