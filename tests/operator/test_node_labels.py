"""The node-label cache of the GPU-fit check: one listing per node selector for the runs
that ask together or within its lifetime; a fresh listing after it; errors not held.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

import pytest
from kubernetes.client.rest import ApiException
from qwenft_operator.node_labels import RecentNodeLabels

A100 = [{"nvidia.com/gpu.memory": "81920"}]


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Lister:
    """Lists nodes after ``release`` is set, counting the listings per selector."""

    def __init__(self) -> None:
        self.listed: list[dict[str, str]] = []
        self.release = asyncio.Event()
        self.fail_next: Exception | None = None

    async def __call__(self, selector: Mapping[str, str]) -> list[dict[str, str]] | None:
        self.listed.append(dict(selector))
        await self.release.wait()
        if self.fail_next is not None:
            err, self.fail_next = self.fail_next, None
            raise err
        return [dict(labels, pool=selector.get("pool", "any")) for labels in A100]


def test_runs_asking_together_share_one_listing() -> None:
    async def scenario() -> None:
        lister = Lister()
        nodes = RecentNodeLabels(lister, clock=Clock())
        asks = [asyncio.ensure_future(nodes.of({"pool": "h100"})) for _ in range(50)]
        await asyncio.sleep(0)  # let every ask start before the listing answers
        lister.release.set()
        answers = await asyncio.gather(*asks)
        assert lister.listed == [{"pool": "h100"}]
        assert all(a == [{"nvidia.com/gpu.memory": "81920", "pool": "h100"}] for a in answers)

    asyncio.run(scenario())


def test_an_answer_serves_until_it_expires_per_selector() -> None:
    async def scenario() -> None:
        lister, clock = Lister(), Clock()
        lister.release.set()
        nodes = RecentNodeLabels(lister, ttl=10.0, clock=clock)
        await nodes.of({"pool": "h100"})
        clock.now += 9.9
        await nodes.of({"pool": "h100"})
        assert len(lister.listed) == 1
        # another selector is another listing; the order of its keys does not matter
        await nodes.of({"pool": "a100", "zone": "b"})
        await nodes.of({"zone": "b", "pool": "a100"})
        assert len(lister.listed) == 2
        clock.now += 0.2
        await nodes.of({"pool": "h100"})
        assert lister.listed[-1] == {"pool": "h100"} and len(lister.listed) == 3

    asyncio.run(scenario())


def test_an_error_reaches_every_waiting_run_and_is_not_held() -> None:
    async def scenario() -> None:
        lister = Lister()
        lister.fail_next = ApiException(status=503)
        nodes = RecentNodeLabels(lister, clock=Clock())
        asks = [asyncio.ensure_future(nodes.of({})) for _ in range(3)]
        await asyncio.sleep(0)
        lister.release.set()
        outcomes = await asyncio.gather(*asks, return_exceptions=True)
        assert [getattr(o, "status", None) for o in outcomes] == [503, 503, 503]
        assert len(lister.listed) == 1
        # the next ask lists again, and that answer is held
        assert await nodes.of({}) == [{"nvidia.com/gpu.memory": "81920", "pool": "any"}]
        assert await nodes.of({}) is not None
        assert len(lister.listed) == 2

    asyncio.run(scenario())


@pytest.mark.parametrize("answer", [None, []])
def test_no_permission_or_no_nodes_is_held_too(answer: list[dict[str, str]] | None) -> None:
    calls = []

    async def list_labels(selector: Mapping[str, str]) -> list[dict[str, str]] | None:
        calls.append(selector)
        return answer

    async def scenario() -> None:
        nodes = RecentNodeLabels(list_labels, clock=Clock())
        assert await nodes.of({}) == answer
        assert await nodes.of({}) == answer
        assert len(calls) == 1

    asyncio.run(scenario())
