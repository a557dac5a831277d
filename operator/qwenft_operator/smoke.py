"""The smoke test: a run's evaluationPrompts sent to its endpoint once it is Ready.

Each prompt goes to the OpenAI ``/chat/completions`` route of ``status.endpoint`` (greedy,
``maxTokens`` tokens); an answer passes when it contains ``expectContains`` (a prompt
without one passes once the endpoint answers it). :func:`evaluate_answers` is the pure check;
:func:`run_smoke_test` is the HTTP side (httpx): an endpoint that does not answer, or
answers with an error status, is tried again a few times and then reported unreachable.
The reconcile decides when a test is due and records the
:class:`~qwenft_operator.status.SmokeOutcome`.

    outcome = await run_smoke_test(url, model, prompts, generation=3)
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import UTC, datetime

import httpx

from qwenft_operator.status import SmokeOutcome, SmokeTest
from qwenft_operator.workloads import EvaluationPrompt

ATTEMPTS = 3  # tries of an endpoint that does not answer
RETRY_SECONDS = 2.0
REQUEST_TIMEOUT_SECONDS = 60.0  # one generation of up to maxTokens tokens
MAX_QUOTE = 80  # characters of a prompt or answer quoted in a message


class EndpointUnreachable(Exception):
    """The endpoint did not answer a prompt after every attempt."""


def _quote(text: str) -> str:
    return repr(text if len(text) <= MAX_QUOTE else text[:MAX_QUOTE] + "...")


def evaluate_answers(
    prompts: Sequence[EvaluationPrompt], answers: Sequence[str], now: datetime | None = None
) -> SmokeTest:
    """Check each answer against its prompt; the message names every failing prompt."""
    problems = []
    for index, (prompt, answer) in enumerate(zip(prompts, answers, strict=True)):
        expected = prompt.expect_contains
        if expected is not None and expected not in answer:
            problems.append(
                f"prompt {index} {_quote(prompt.prompt)}: answer {_quote(answer)} "
                f"does not contain {expected!r}"
            )
    return SmokeTest(
        passed=not problems,
        total=len(prompts),
        failed=len(problems),
        message="; ".join(problems) or None,
        time=now or datetime.now(UTC).replace(microsecond=0),
    )


def unreachable(
    prompts: Sequence[EvaluationPrompt], error: str, now: datetime | None = None
) -> SmokeTest:
    """The result when the endpoint never answered: every prompt failed."""
    return SmokeTest(
        passed=False,
        total=len(prompts),
        failed=len(prompts),
        message=error,
        time=now or datetime.now(UTC).replace(microsecond=0),
    )


async def ask(
    client: httpx.AsyncClient,
    url: str,
    model: str,
    prompt: EvaluationPrompt,
    *,
    attempts: int = ATTEMPTS,
    retry_seconds: float = RETRY_SECONDS,
) -> str:
    """The endpoint's answer to ``prompt``; :class:`EndpointUnreachable` after ``attempts``."""
    body = {
        "model": model,
        "messages": [{"role": "user", "content": prompt.prompt}],
        "max_tokens": prompt.max_tokens,
        "temperature": 0,
    }
    error = ""
    for attempt in range(attempts):
        if attempt:
            await asyncio.sleep(retry_seconds)
        try:
            response = await client.post(f"{url.rstrip('/')}/chat/completions", json=body)
        except httpx.HTTPError as err:
            error = f"{type(err).__name__}: {err}" if str(err) else type(err).__name__
            continue
        if response.status_code != 200:
            error = f"HTTP {response.status_code}: {response.text[:200]}"
            continue
        try:
            return str(response.json()["choices"][0]["message"]["content"] or "")
        except (ValueError, KeyError, IndexError, TypeError):
            error = f"not an OpenAI chat completion: {response.text[:200]}"
    raise EndpointUnreachable(f"{url} did not answer after {attempts} attempts ({error})")


async def run_smoke_test(
    url: str,
    model: str,
    prompts: Sequence[EvaluationPrompt],
    *,
    generation: int,
    attempts: int = ATTEMPTS,
    retry_seconds: float = RETRY_SECONDS,
    timeout: float = REQUEST_TIMEOUT_SECONDS,
) -> SmokeOutcome:
    """Send every prompt in turn and check the answers."""
    answers = []
    async with httpx.AsyncClient(timeout=timeout) as client:
        try:
            for prompt in prompts:
                answers.append(
                    await ask(
                        client, url, model, prompt, attempts=attempts, retry_seconds=retry_seconds
                    )
                )
        except EndpointUnreachable as err:
            return SmokeOutcome(generation, unreachable(prompts, str(err)), reachable=False)
    return SmokeOutcome(generation, evaluate_answers(prompts, answers), reachable=True)
