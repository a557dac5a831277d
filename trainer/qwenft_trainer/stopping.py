"""Stopping a run on request: finish the step, write a complete checkpoint, exit "stopped".

Kubernetes stops a training pod (preemption, eviction, node drain, a deleted pod, a
suspended Job) with SIGTERM and kills it ``terminationGracePeriodSeconds`` later. A run
that dies then loses every step since its last periodic checkpoint. So SIGTERM and SIGINT
only *request* a stop here (as does the launcher's stop file, see
:data:`~qwenft_trainer.exit_codes.STOP_FILE_ENV`); at the end of every optimizer step all
ranks take the maximum of their requests (one tiny all-reduce), so a rank that saw the
signal and one that did not stop after the same step, and the Hugging Face Trainer's own
controls save a checkpoint there and end training. The run then exits with
:data:`~qwenft_trainer.exit_codes.STOPPED` and a restart resumes from that checkpoint.

    with StopRequest.installed(stop_file=os.environ.get(STOP_FILE_ENV)) as request:
        trainer.add_callback(StopCallback(request))
        trainer.train()

A second SIGINT (Ctrl-C pressed again) stops at once with ``KeyboardInterrupt``; further
SIGTERMs are ignored, because torchrun repeats the signal to ranks that are already
finishing.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

log = logging.getLogger(__name__)

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopRequest:
    """Whether this process was asked to stop, and by what (a signal or the stop file)."""

    def __init__(self, *, stop_file: str | None = None) -> None:
        self.stop_file = stop_file or None
        self.signal: signal.Signals | None = None

    @classmethod
    @contextmanager
    def installed(cls, *, stop_file: str | None = None) -> Iterator[StopRequest]:
        """A request with SIGTERM and SIGINT handlers installed; the old ones come back after.

        Off the main thread (where Python can't set handlers) only the stop file counts.
        """
        request = cls(stop_file=stop_file)
        previous: dict[signal.Signals, Any] = {}
        if threading.current_thread() is threading.main_thread():
            for sig in SIGNALS:
                previous[sig] = signal.signal(sig, request.handle)
        try:
            yield request
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def handle(self, signum: int, frame: FrameType | None) -> None:
        received = signal.Signals(signum)
        if self.signal is not None and received == signal.SIGINT:
            raise KeyboardInterrupt
        if self.signal is None:
            self.signal = received
            log.warning("%s: stopping after this step with a checkpoint", received.name)

    @property
    def requested(self) -> bool:
        return self.signal is not None or bool(self.stop_file and os.path.exists(self.stop_file))

    @property
    def cause(self) -> str:
        """What asked this process to stop ("" when nothing did)."""
        if self.signal is not None:
            return self.signal.name
        return "stop file" if self.requested else ""


def any_rank(flag: bool, device: Any) -> bool:
    """True on every rank when ``flag`` is true on any (``flag`` itself without a group)."""
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
        return flag
    box = torch.tensor([1 if flag else 0], dtype=torch.int32, device=device)
    dist.all_reduce(box, op=dist.ReduceOp.MAX)
    return bool(box.item())


class StopCallback(TrainerCallback):
    """At each step end: if any rank was asked to stop, save a checkpoint and end training.

    Runs after the Trainer's ``DefaultFlowCallback``, which has already decided whether
    this step saves, evaluates or ends the run. A request at the last step changes nothing
    (the run finishes normally); otherwise the step's evaluation is skipped (to fit the
    grace period) and ``stopped_at`` records the step of the checkpoint.
    """

    def __init__(self, request: StopRequest) -> None:
        self.request = request
        self.stopped_at: int | None = None

    def on_step_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any
    ) -> None:
        # every rank runs this collective at every step, so none waits on another
        stop = any_rank(self.request.requested, args.device)
        if not stop or state.global_step >= state.max_steps:
            return
        self.stopped_at = state.global_step
        control.should_save = True
        control.should_training_stop = True
        control.should_evaluate = False
