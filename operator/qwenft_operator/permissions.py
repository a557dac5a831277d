"""What the operator must be allowed to list and watch, checked once before it starts.

kopf stops the whole operator when the API server refuses one of its watches, with a
stack trace about that one request. So the operator asks first (one
SelfSubjectAccessReview per namespace, resource and verb, through
:func:`qwenft_operator.kube.denied`) and, if anything is refused, exits with one message
that names every refusal and the fix. Pure: this module only says what to ask and how to
report the answer.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from qwenft_operator.spec import GROUP, PLURAL

# (API group, resource) of everything the operator watches; "" is the core group.
WATCHED = (
    (GROUP, PLURAL),
    (GROUP, "qwenmodelservers"),
    ("batch", "jobs"),
    ("", "pods"),
    ("apps", "deployments"),
    ("", "configmaps"),  # the ConfigMaps and claims runs reference, to see them come and go
    ("", "persistentvolumeclaims"),
)
VERBS = ("list", "watch")


@dataclass(frozen=True)
class Access:
    """One permission: ``verb`` on ``resource`` in ``namespace`` ("" means every one)."""

    namespace: str
    group: str
    resource: str
    verb: str

    def describe(self) -> str:
        where = f"namespace {self.namespace}" if self.namespace else "all namespaces"
        resource = f"{self.resource}.{self.group}" if self.group else self.resource
        return f"{self.verb} {resource} in {where}"


def required(namespaces: Sequence[str]) -> list[Access]:
    """Every list/watch the operator needs: per watched namespace, or cluster-wide."""
    return [
        Access(namespace, group, resource, verb)
        for namespace in (namespaces or ("",))
        for group, resource in WATCHED
        for verb in VERBS
    ]


def report(denied: Iterable[Access]) -> str | None:
    """The start-up error for the refused accesses, or None when nothing was refused."""
    refused = list(denied)
    if not refused:
        return None
    namespaces = sorted({a.namespace for a in refused if a.namespace})
    fix = (
        "grant the chart's Role in " + ", ".join(namespaces) + " or remove "
        + ("it" if len(namespaces) == 1 else "them") + " from QWENFT_NAMESPACES"
        if namespaces
        else "grant the chart's ClusterRole, or set QWENFT_NAMESPACES to the namespaces "
        "the operator may watch"
    )  # fmt: skip
    lines = "; ".join(a.describe() for a in refused)
    return f"the operator may not {lines}: {fix}"
