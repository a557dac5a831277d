"""Reconcile passes coalesced per key: one at a time, one more for triggers during a pass,
keys independent, an error ending the passes."""

from __future__ import annotations

import asyncio

import pytest
from qwenft_operator.coalesce import Coalescer


def test_triggers_during_a_pass_make_exactly_one_more() -> None:
    passes: list[tuple[str, bool]] = []
    running = 0
    most = 0

    async def one_pass(key: str, first: bool) -> str:
        nonlocal running, most
        passes.append((key, first))
        running += 1
        most = max(most, running)
        await asyncio.sleep(0)  # yield: the other triggers arrive during this pass
        running -= 1
        return f"{key} pass {sum(k == key for k, _ in passes)}"

    async def scenario() -> list[str | None]:
        coalescer = Coalescer[str]()
        return await asyncio.gather(
            *(coalescer.run("a", lambda first: one_pass("a", first)) for _ in range(4)),
            coalescer.run("b", lambda first: one_pass("b", first)),
        )

    results = asyncio.run(scenario())
    assert [p for p in passes if p[0] == "a"] == [("a", True), ("a", False)]
    # the first caller gets the last pass's result; the others are answered at once
    assert results[0] == "a pass 2" and results[1:4] == [None, None, None]
    assert results[4] == "b pass 1" and ("b", False) not in passes
    assert most == 2  # a and b side by side, never two passes over a


def test_an_error_ends_the_passes_and_frees_the_key() -> None:
    async def failing(first: bool) -> None:
        raise OSError("connection refused")

    async def scenario() -> str | None:
        coalescer = Coalescer[str]()
        with pytest.raises(OSError):
            await coalescer.run("a", failing)

        async def fine(first: bool) -> str:
            return "ok"

        return await coalescer.run("a", fine)

    assert asyncio.run(scenario()) == "ok"
