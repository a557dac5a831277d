"""The wait before a failed reconcile is tried again: doubling per failure in a row, capped,
reset by a success, counted per run."""

from __future__ import annotations

from qwenft_operator.backoff import RetryBackoff, retry_delay


def test_wait_doubles_up_to_the_cap() -> None:
    waits = [retry_delay(n, first=2.0, cap=300.0) for n in range(1, 11)]
    assert waits == [2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 300.0, 300.0]
    assert retry_delay(10_000, first=2.0, cap=300.0) == 300.0  # no overflow after days down


def test_each_run_backs_off_on_its_own_and_a_success_resets_it() -> None:
    backoff = RetryBackoff(first=1.0, cap=10.0)
    assert [backoff.failed("a") for _ in range(5)] == [1.0, 2.0, 4.0, 8.0, 10.0]
    assert backoff.failed("b") == 1.0
    assert backoff.waiting == 2
    backoff.succeeded("a")
    assert backoff.waiting == 1
    assert backoff.failed("a") == 1.0
