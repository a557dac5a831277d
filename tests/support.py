"""Helpers every test directory shares: a free loopback port, and waiting on a condition.

Tests wait for a server to be ready, a checkpoint to appear or a metric to change by polling
a condition until a deadline, never by sleeping a fixed time; :func:`poll` is that loop, once.
``tests/`` is on pytest's ``pythonpath`` (pyproject.toml), so any test module imports it:

    from support import free_port, poll

    port = free_port()
    poll(lambda: ready(port), timeout=60, what="the server on /readyz")
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def poll(
    condition: Callable[[], T],
    *,
    timeout: float,
    what: str,
    interval: float = 0.2,
    retry_on: tuple[type[BaseException], ...] = (),
    why: Callable[[], str] | None = None,
) -> T:
    """Wait until ``condition()`` is truthy and return its value, or fail naming ``what``.

    An exception of a type in ``retry_on`` counts as "not yet" (the last one is reported);
    ``why`` adds context to the failure, such as a process's log tail. The condition runs at
    least once, and once more at the deadline.
    """
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while True:
        past_deadline = time.monotonic() >= deadline
        try:
            value = condition()
        except retry_on as err:
            last = err
        else:
            if value:
                return value
        if past_deadline:
            error = f" (last error: {last!r})" if last is not None else ""
            context = f"\n{why()}" if why is not None else ""
            raise AssertionError(
                f"timed out after {timeout:.0f}s waiting for {what}{error}{context}"
            )
        time.sleep(min(interval, max(0.0, deadline - time.monotonic())))
