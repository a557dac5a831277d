"""The smoke test of a Ready run's endpoint (evaluationPrompts).

Covers: the pure check (an answer passes when it contains expectContains, a prompt without
one passes once answered, the message names each failing prompt by index and text);
an endpoint nobody listens on is tried ``attempts`` times and reported unreachable, every
prompt failed; and, marked slow, a REAL ``qwenft serve`` of the tiny model on a loopback
port: a passing run (the expected text taken from the model's own greedy answer) and a
failing one that names the prompt whose answer lacked the expected text.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from qwenft_operator.smoke import evaluate_answers, run_smoke_test
from qwenft_operator.status import SmokeOutcome
from qwenft_operator.workloads import EvaluationPrompt
from support import free_port, poll

NOW = datetime(2026, 1, 1, tzinfo=UTC)
MODEL = "smoke-tiny"


def prompt(text: str, expect: str | None = None, max_tokens: int = 8) -> EvaluationPrompt:
    return EvaluationPrompt(prompt=text, expect_contains=expect, max_tokens=max_tokens)


def test_answers_pass_when_they_contain_the_expected_text() -> None:
    prompts = [prompt("capital of France?", "Paris"), prompt("say hi")]
    result = evaluate_answers(prompts, ["It is Paris.", ""], NOW)
    assert (result.passed, result.total, result.failed, result.message) == (True, 2, 0, None)
    assert result.time == NOW


def test_failing_prompts_are_named() -> None:
    prompts = [prompt("2+2?", "4"), prompt("capital of France?", "Paris"), prompt("x" * 200, "y")]
    result = evaluate_answers(prompts, ["4", "Lyon", "z"], NOW)
    assert (result.passed, result.total, result.failed) == (False, 3, 2)
    assert result.message is not None
    assert "prompt 1 'capital of France?': answer 'Lyon' does not contain 'Paris'" in result.message
    assert "prompt 2 'xxx" in result.message and "...'" in result.message  # long text cut
    assert "prompt 0" not in result.message


def test_unreachable_endpoint_is_retried_then_reported() -> None:
    url = f"http://127.0.0.1:{free_port()}/v1"
    started = time.monotonic()
    outcome = asyncio.run(
        run_smoke_test(url, MODEL, [prompt("hi"), prompt("again")], generation=4,
                       attempts=3, retry_seconds=0.2)
    )  # fmt: skip
    assert time.monotonic() - started >= 0.4  # two waits between three attempts
    assert outcome.generation == 4 and outcome.reachable is False
    result = outcome.result
    assert (result.passed, result.total, result.failed) == (False, 2, 2)
    assert result.message is not None and "did not answer after 3 attempts" in result.message
    assert url in result.message


@pytest.fixture(scope="module")
def served(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    log = tmp_path_factory.mktemp("smoke") / "serve.log"
    qwenft = Path(sys.executable).parent / "qwenft"
    argv = [str(qwenft), "serve", "--model", str(tiny_model_dir), "--served-model-name", MODEL,
            "--host", "127.0.0.1", "--port", str(port), "--device", "cpu"]  # fmt: skip
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
    try:

        def ready() -> bool:
            assert proc.poll() is None, log.read_text()[-3000:]
            return httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200

        poll(
            ready,
            timeout=120,
            what="the server on /readyz",
            retry_on=(httpx.HTTPError,),
            why=lambda: log.read_text()[-3000:],
        )
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def smoke(url: str, prompts: list[EvaluationPrompt]) -> SmokeOutcome:
    return asyncio.run(run_smoke_test(url, MODEL, prompts, generation=1, attempts=1))


@pytest.mark.slow
def test_real_server_passes_and_fails(served: str) -> None:
    first = smoke(served, [prompt("Hello, who are you?", max_tokens=12)])
    assert first.reachable and first.result.passed and first.result.total == 1

    answer = httpx.post(
        f"{served}/chat/completions",
        json={"model": MODEL, "messages": [{"role": "user", "content": "Hello, who are you?"}],
              "max_tokens": 12, "temperature": 0},
        timeout=60,
    ).json()["choices"][0]["message"]["content"]  # fmt: skip
    assert answer, "the tiny model answered nothing; pick another prompt"
    expected = answer.strip()[:4] or answer[:1]
    never = "\u2603 no tiny model writes this \u2603"
    outcome = smoke(
        served,
        [prompt("Hello, who are you?", expected, max_tokens=12), prompt("Name a color.", never)],
    )
    assert outcome.reachable
    result = outcome.result
    assert (result.passed, result.total, result.failed) == (False, 2, 1)
    assert result.message is not None and result.message.startswith("prompt 1 'Name a color.'")
    assert never in result.message
