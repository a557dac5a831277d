"""What a running training job tells the outside: metrics, log lines and a progress bar.

Three audiences watch a run. Prometheus scrapes the series in ``docs/metrics.md`` from
rank 0, and so does the operator, which mirrors them into the QwenFineTune status
(:mod:`qwenft_operator.progress`); ``qwenft run --local`` and log collectors read one JSON
object per line from stdout (``{"event": "train_log", ...}``); a person watching
``kubectl logs`` sees a tqdm bar on stderr. All three are fed by one ``TrainerCallback``
that runs on rank 0 only, from the numbers the Hugging Face Trainer already keeps
(``TrainerState``).

    metrics = TrainMetrics(run="my-run")
    metrics.serve(port=9400)
    trainer.add_callback(TelemetryCallback(metrics, samples_per_step=effective_batch))

It is over 300 lines because the metrics, the log record and the progress bar read the same
Trainer state in one callback.
"""

from __future__ import annotations

import json
import logging
import math
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from qwenft_trainer.checkpoints import MARKER, PREFIX, list_checkpoints

log = logging.getLogger(__name__)

# Series name -> help text; names are the contract in docs/metrics.md.
GAUGES: dict[str, str] = {
    "qwenft_train_step": "Optimizer steps done.",
    "qwenft_train_total_steps": "Optimizer steps planned.",
    "qwenft_train_epoch": "Fractional epoch.",
    "qwenft_train_loss": "Training loss of the last logging step.",
    "qwenft_train_eval_loss": "Loss on the held-out set at the last evaluation.",
    "qwenft_train_learning_rate": "Current learning rate.",
    "qwenft_train_tokens_per_second": "Trained (non-padding) tokens per second, all ranks.",
    "qwenft_train_samples_per_second": "Samples per second, all ranks.",
    "qwenft_train_eta_seconds": "Estimated seconds to the last step.",
    "qwenft_train_resumed_from_step": "Step the run resumed from (0 for a fresh start).",
    "qwenft_train_last_checkpoint_step": "Step of the newest complete checkpoint.",
}
GPU_GAUGES: dict[str, str] = {
    "qwenft_train_gpu_memory_allocated_bytes": "torch.cuda.memory_allocated of rank 0.",
    "qwenft_train_gpu_memory_reserved_bytes": "torch.cuda.memory_reserved of rank 0.",
}
TOKENS_TOTAL = "qwenft_train_tokens_total"
# One series per complete checkpoint on disk (label ``step``), gone once it is pruned.
CHECKPOINTS = "qwenft_train_checkpoint_time_seconds"


class TrainMetrics:
    """The trainer's Prometheus series, in a registry of their own (no global state)."""

    def __init__(self, *, run: str, cuda: bool | None = None) -> None:
        import torch

        self.run = run
        self.cuda = torch.cuda.is_available() if cuda is None else cuda
        self.registry = CollectorRegistry()
        names = {**GAUGES, **(GPU_GAUGES if self.cuda else {})}
        self.families = {
            name: Gauge(name, text, ["run"], registry=self.registry) for name, text in names.items()
        }
        # prometheus-client appends ``_total`` to counter names itself.
        self.tokens_total = Counter(
            TOKENS_TOTAL.removesuffix("_total"),
            "Trained tokens so far.",
            ["run"],
            registry=self.registry,
        ).labels(run=run)
        self.set("qwenft_train_resumed_from_step", 0)
        self.checkpoints: Gauge | None = None  # registered once the trainer lists them
        self._checkpoint_steps: set[int] = set()

    def serve(self, port: int, addr: str = "0.0.0.0") -> bool:
        """Start the ``/metrics`` HTTP endpoint; False (with a warning) if the port is taken."""
        try:
            start_http_server(port, addr=addr, registry=self.registry)
        except OSError as err:
            log.warning("metrics endpoint not started on port %d: %s", port, err)
            return False
        log.info("metrics on http://%s:%d/metrics", addr, port)
        return True

    def set(self, name: str, value: float | None) -> None:
        """Set a gauge; its series appears on the first value, so nothing reads 0 before it.

        NaN and infinities are exported as they are: a NaN loss is what the
        QwenFineTuneLossNaN alert looks for.
        """
        if value is not None and name in self.families:
            self.families[name].labels(run=self.run).set(value)

    def set_checkpoints(self, written: Mapping[int, float]) -> None:
        """Export exactly the complete checkpoints on disk: step -> Unix time written.

        The family appears on the first call, so a reader can tell "not listed yet" (no
        family) from "none on disk" (a family without samples).
        """
        if self.checkpoints is None:
            self.checkpoints = Gauge(
                CHECKPOINTS,
                "Unix time each complete checkpoint still on disk was written (label step).",
                ["run", "step"],
                registry=self.registry,
            )
        for step in self._checkpoint_steps - set(written):
            self.checkpoints.remove(self.run, str(step))
        for step, seconds in written.items():
            self.checkpoints.labels(run=self.run, step=str(step)).set(seconds)
        self._checkpoint_steps = set(written)

    def update_gpu_memory(self) -> None:
        if not self.cuda:
            return
        import torch

        self.set("qwenft_train_gpu_memory_allocated_bytes", float(torch.cuda.memory_allocated()))
        self.set("qwenft_train_gpu_memory_reserved_bytes", float(torch.cuda.memory_reserved()))


@dataclass(frozen=True)
class StepRates:
    """Rates between two logging steps, and the time left at that pace."""

    tokens_per_second: float
    samples_per_second: float
    eta_seconds: float


def build_step_rates(
    *,
    steps: int,
    tokens: int,
    seconds: float,
    samples_per_step: int,
    steps_left: int,
    session_steps: int,
    session_seconds: float,
) -> StepRates:
    """Throughput over the last window; the ETA uses the whole session's pace per step."""
    window = max(seconds, 1e-9)
    pace = session_seconds / session_steps if session_steps > 0 else 0.0
    return StepRates(
        tokens_per_second=tokens / window,
        samples_per_second=steps * samples_per_step / window,
        eta_seconds=max(steps_left, 0) * pace,
    )


def build_log_record(event: str, **fields: Any) -> str:
    """One JSON log line; floats rounded, non-finite values as null."""

    def clean(value: Any) -> Any:
        if isinstance(value, float):
            return round(value, 6) if math.isfinite(value) else None
        return value

    return json.dumps({"event": event, **{k: clean(v) for k, v in fields.items()}})


def emit(line: str, stream: IO[str] | None = None) -> None:
    """Print one log line to stdout (or ``stream``) and flush, so the operator sees it now."""
    out = stream or sys.stdout
    out.write(line + "\n")
    out.flush()


def complete_checkpoints(output_dir: str | Path) -> dict[int, float]:
    """Step -> Unix time of its complete marker, for every complete checkpoint on disk."""
    written: dict[int, float] = {}
    for checkpoint in list_checkpoints(output_dir):
        try:
            written[checkpoint.step] = (checkpoint.path / MARKER).stat().st_mtime
        except OSError:  # no marker (half written), or pruned while listing
            continue
    return written


class TelemetryCallback(TrainerCallback):
    """Feeds metrics, JSON log lines and the tqdm bar from the Trainer's events (rank 0)."""

    def __init__(
        self,
        metrics: TrainMetrics | None,
        *,
        samples_per_step: int,
        resumed_from_step: int = 0,
        progress_bar: bool = True,
        stream: IO[str] | None = None,
    ) -> None:
        self.metrics = metrics
        self.samples_per_step = samples_per_step
        self.resumed_from_step = resumed_from_step
        self.progress_bar = progress_bar
        self.stream = stream
        self.bar: Any = None
        self.last_loss: float | None = None
        self.last_eval_loss: float | None = None
        self._start = time.monotonic()
        self._start_step = 0
        self._mark: tuple[float, int, int] = (self._start, 0, 0)  # (time, step, tokens)

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any
    ) -> None:
        if not state.is_world_process_zero:
            return
        now = time.monotonic()
        tokens = int(state.num_input_tokens_seen or 0)
        self._start, self._start_step = now, state.global_step
        self._mark = (now, state.global_step, tokens)
        if self.metrics:
            self.metrics.set("qwenft_train_total_steps", float(state.max_steps))
            self.metrics.set("qwenft_train_step", float(state.global_step))
            self.metrics.set("qwenft_train_resumed_from_step", float(self.resumed_from_step))
            if self.resumed_from_step > 0:
                self.metrics.set("qwenft_train_last_checkpoint_step", float(self.resumed_from_step))
            self.metrics.set_checkpoints(complete_checkpoints(args.output_dir))
            self.metrics.tokens_total.inc(tokens)
            self.metrics.update_gpu_memory()
        if self.progress_bar:
            from tqdm.auto import tqdm

            self.bar = tqdm(
                total=state.max_steps,
                initial=state.global_step,
                desc="training",
                unit="step",
                file=sys.stderr,
                dynamic_ncols=True,
                # in a pod's log (no terminal) a redraw is a new line: redraw rarely
                mininterval=0.5 if sys.stderr.isatty() else 30.0,
            )

    def on_step_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any
    ) -> None:
        if state.is_world_process_zero and self.bar is not None:
            self.bar.update(state.global_step - self.bar.n)

    def on_log(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        logs: Mapping[str, float] | None = None,
        **kw: Any,
    ) -> None:
        if not state.is_world_process_zero or not logs:
            return
        if "eval_loss" in logs:
            self._on_eval_log(state, logs)
        if "loss" in logs:
            self._on_train_log(state, logs)

    def _on_train_log(self, state: TrainerState, logs: Mapping[str, float]) -> None:
        now = time.monotonic()
        tokens = int(state.num_input_tokens_seen or 0)
        last_time, last_step, last_tokens = self._mark
        progress = build_step_rates(
            steps=state.global_step - last_step,
            tokens=tokens - last_tokens,
            seconds=now - last_time,
            samples_per_step=self.samples_per_step,
            steps_left=state.max_steps - state.global_step,
            session_steps=state.global_step - self._start_step,
            session_seconds=now - self._start,
        )
        self._mark = (now, state.global_step, tokens)
        self.last_loss = float(logs["loss"])
        learning_rate = logs.get("learning_rate")
        if self.metrics:
            m = self.metrics
            m.set("qwenft_train_step", float(state.global_step))
            m.set("qwenft_train_epoch", state.epoch)
            m.set("qwenft_train_loss", self.last_loss)
            m.set("qwenft_train_learning_rate", learning_rate)
            m.set("qwenft_train_tokens_per_second", progress.tokens_per_second)
            m.set("qwenft_train_samples_per_second", progress.samples_per_second)
            m.set("qwenft_train_eta_seconds", progress.eta_seconds)
            m.tokens_total.inc(max(tokens - last_tokens, 0))
            m.update_gpu_memory()
        record = build_log_record(
            "train_log",
            step=state.global_step,
            total_steps=state.max_steps,
            epoch=state.epoch,
            loss=self.last_loss,
            learning_rate=learning_rate,
            grad_norm=logs.get("grad_norm"),
            tokens_per_second=progress.tokens_per_second,
            samples_per_second=progress.samples_per_second,
            eta_seconds=progress.eta_seconds,
            tokens_total=tokens,
        )
        self._write(record)
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{self.last_loss:.4f}", refresh=False)

    def _on_eval_log(self, state: TrainerState, logs: Mapping[str, float]) -> None:
        self.last_eval_loss = float(logs["eval_loss"])
        if self.metrics:
            self.metrics.set("qwenft_train_eval_loss", self.last_eval_loss)
        self._write(
            build_log_record(
                "eval", step=state.global_step, epoch=state.epoch, eval_loss=self.last_eval_loss
            )
        )

    def on_save(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any
    ) -> None:
        """Publish the checkpoint; runs after ``CheckpointCallback`` wrote its marker.

        The gauge only moves to a checkpoint that carries the complete marker, so the
        operator never records a step that a resume could not start from.
        """
        if not state.is_world_process_zero:
            return
        path = f"{args.output_dir}/{PREFIX}{state.global_step}"
        self._write(build_log_record("checkpoint", step=state.global_step, path=path))
        if self.metrics and (Path(path) / MARKER).is_file():
            self.metrics.set("qwenft_train_last_checkpoint_step", float(state.global_step))
        if self.metrics:  # after CheckpointCallback pruned the old ones
            self.metrics.set_checkpoints(complete_checkpoints(args.output_dir))

    def on_train_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any
    ) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def _write(self, line: str) -> None:
        if self.bar is not None:
            self.bar.clear()
        emit(line, self.stream)
        if self.bar is not None:
            self.bar.refresh()
