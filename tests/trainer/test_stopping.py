"""Stop requests (qwenft_trainer.stopping), in this process, without training a step.

Covers: SIGTERM and SIGINT sent to this process only request a stop (the process lives
on) and name their cause; a repeated SIGTERM is ignored while a second SIGINT raises
KeyboardInterrupt; the stop file counts from the moment it exists; the previous signal
handlers come back afterwards; without a process group ``any_rank`` is the local flag;
the callback asks the Trainer for a checkpoint and the end of training at a middle step,
leaves the last step alone and does nothing without a request; a run whose stop file
exists before training starts exits 75 at once, reporting that nothing was saved.
Stopping real runs (one process, two under torchrun, the pod launcher) is in
test_train_stop.py and tests/operator/test_train_launcher.py.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import pytest
from qwenft_trainer.stopping import StopCallback, StopRequest, any_rank
from transformers import TrainerControl, TrainerState, TrainingArguments


def test_sigterm_requests_a_stop_and_repeats_are_ignored() -> None:
    with StopRequest.installed() as request:
        assert not request.requested and request.cause == ""
        os.kill(os.getpid(), signal.SIGTERM)
        assert request.requested and request.cause == "SIGTERM"
        os.kill(os.getpid(), signal.SIGTERM)  # torchrun may repeat it: still alive here
        assert request.cause == "SIGTERM"


def test_a_second_sigint_interrupts_at_once() -> None:
    with StopRequest.installed() as request:
        os.kill(os.getpid(), signal.SIGINT)
        assert request.requested and request.cause == "SIGINT"
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)


def test_the_stop_file_counts_once_it_exists(tmp_path: Path) -> None:
    stop_file = tmp_path / "stop"
    with StopRequest.installed(stop_file=str(stop_file)) as request:
        assert not request.requested
        stop_file.touch()
        assert request.requested and request.cause == "stop file"


def test_previous_handlers_come_back() -> None:
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    with StopRequest.installed() as request:
        assert signal.getsignal(signal.SIGTERM) == request.handle
    assert {sig: signal.getsignal(sig) for sig in before} == before


@pytest.mark.parametrize("flag", [True, False])
def test_without_a_process_group_any_rank_is_the_local_flag(flag: bool) -> None:
    assert any_rank(flag, "cpu") is flag


def step_end(request: StopRequest, step: int, max_steps: int = 10) -> tuple[StopCallback, Any]:
    callback = StopCallback(request)
    args = TrainingArguments(output_dir="unused", use_cpu=True, report_to="none")
    state = TrainerState(global_step=step, max_steps=max_steps)
    control = TrainerControl(should_evaluate=True)
    callback.on_step_end(args, state, control)
    return callback, control


def test_a_request_saves_and_ends_training_at_a_middle_step(tmp_path: Path) -> None:
    stop_file = tmp_path / "stop"
    stop_file.touch()
    callback, control = step_end(StopRequest(stop_file=str(stop_file)), step=4)
    assert callback.stopped_at == 4
    assert control.should_save and control.should_training_stop
    assert not control.should_evaluate


def test_a_request_at_the_last_step_lets_the_run_finish(tmp_path: Path) -> None:
    stop_file = tmp_path / "stop"
    stop_file.touch()
    callback, control = step_end(StopRequest(stop_file=str(stop_file)), step=10)
    assert callback.stopped_at is None
    assert not control.should_save and not control.should_training_stop


def test_no_request_changes_nothing() -> None:
    callback, control = step_end(StopRequest(), step=4)
    assert callback.stopped_at is None
    assert not control.should_save and not control.should_training_stop
    assert control.should_evaluate


def test_a_stop_asked_for_before_training_exits_stopped_without_a_step(
    tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The stop file exists from the start: no step, no checkpoint, exit 75, a report."""
    from qwenft_trainer import exit_codes
    from trainrun import InProcessRun, events, write_config, write_dialogues

    stop_file = tmp_path / "stop"
    stop_file.touch()
    monkeypatch.setenv(exit_codes.STOP_FILE_ENV, str(stop_file))
    (tmp_path / "termination-log").touch()
    config = write_config(
        tmp_path / "train.yaml",
        tiny_model_dir,
        write_dialogues(tmp_path / "train.jsonl", count=8),
        tmp_path / "out",
        termination_log=str(tmp_path / "termination-log"),
    )
    run = InProcessRun(config)
    assert run.code == exit_codes.STOPPED
    assert events(run.stdout, "train_stopped") == [
        {"event": "train_stopped", "step": 0, "checkpoint": None, "cause": "stop file"}
    ]
    assert not events(run.stdout, "train_log")
    # only the tokenized samples, kept for the resumed run: no checkpoint, no adapter
    from qwenft_trainer.token_cache import CACHE_SUBDIR

    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [CACHE_SUBDIR]
    report = (tmp_path / "termination-log").read_text()
    assert '"reason":"Stopped"' in report and "nothing to save" in report
