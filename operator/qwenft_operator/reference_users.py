"""Which runs rely on which referenced objects, so a change of one wakes exactly them.

A decision names the Secrets, ConfigMaps and claims it checked
(:attr:`~qwenft_operator.actions.Decision.references`); :meth:`ReferenceUsers.track` records
them for the run, replacing what its previous decision named, and :meth:`users_of` answers
the watch of a ConfigMap or claim with the runs to reconcile.
"""

from __future__ import annotations

from collections.abc import Iterable

from qwenft_operator.metrics import RunKey
from qwenft_operator.references import ObjectKey, Reference

Used = tuple[str, ObjectKey]  # (namespace, (kind, name))


class ReferenceUsers:
    """Runs by the objects they use, and the other way round."""

    def __init__(self) -> None:
        self._users: dict[Used, set[RunKey]] = {}
        self._used: dict[RunKey, set[Used]] = {}

    def track(self, key: RunKey, refs: Iterable[Reference]) -> None:
        """``key`` now uses exactly ``refs`` (none: it uses nothing)."""
        now = {(key[0], ref.object) for ref in refs}
        before = self._used.pop(key, set())
        for gone in before - now:
            users = self._users.get(gone)
            if users is not None:
                users.discard(key)
                if not users:
                    del self._users[gone]
        for added in now - before:
            self._users.setdefault(added, set()).add(key)
        if now:
            self._used[key] = now

    def users_of(self, namespace: str, key: ObjectKey) -> list[RunKey]:
        return sorted(self._users.get((namespace, key), ()))

    def forget(self, key: RunKey) -> None:
        self.track(key, ())
