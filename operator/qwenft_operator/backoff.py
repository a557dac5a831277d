"""How long a run waits before its reconcile is tried again after an API error.

The first retry comes after ``first`` seconds and each failure in a row doubles the wait, up
to ``cap``; a reconcile that gets through resets the run. So an API server that is down for
an hour costs each run a try every few minutes rather than every few seconds, and a passing
blip still costs only seconds. :class:`RetryBackoff` keeps the count per run.

    backoff = RetryBackoff()
    later(key, backoff.failed(key))   # 2, 4, 8, ... 300 s
    backoff.succeeded(key)
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass, field

FIRST_RETRY_SECONDS = 2.0
MAX_RETRY_SECONDS = 300.0


def retry_delay(failures: int, *, first: float, cap: float) -> float:
    """Seconds to wait after ``failures`` (>= 1) failed tries in a row."""
    return float(min(first * 2 ** min(failures - 1, 32), cap))


@dataclass
class RetryBackoff:
    """Failures in a row per key, and the wait each one earns."""

    first: float = FIRST_RETRY_SECONDS
    cap: float = MAX_RETRY_SECONDS
    _failures: dict[Hashable, int] = field(default_factory=dict)

    def failed(self, key: Hashable) -> float:
        """Count one more failure of ``key``; the seconds until it is tried again."""
        count = self._failures.get(key, 0) + 1
        self._failures[key] = count
        return retry_delay(count, first=self.first, cap=self.cap)

    def succeeded(self, key: Hashable) -> None:
        self._failures.pop(key, None)

    @property
    def waiting(self) -> int:
        """How many keys are backing off now."""
        return len(self._failures)
