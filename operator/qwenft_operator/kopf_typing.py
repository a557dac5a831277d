"""kopf's decorators as mypy should see them: kopf is imported untyped in the handlers.

@typed(kopf.on.event(...))
async def changed(**kwargs: Any) -> None: ...
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar, cast

F = TypeVar("F", bound=Callable[..., Any])


def typed(decorator: Any) -> Callable[[F], F]:
    """``decorator`` typed as one that returns the function it is given."""
    return cast(Callable[[F], F], decorator)
