"""The operator's Prometheus metrics (names as in docs/metrics.md, operator section).

One :class:`OperatorMetrics` per operator process, on its own ``CollectorRegistry`` (so
tests can make several), served on ``QWENFT_METRICS_PORT`` at ``/metrics``. The runner
reports phase changes, gang restarts, reconcile durations and errors; the progress reader
mirrors each run's ``status.progress`` into the per-run gauges, removed with the run.
"""

from __future__ import annotations

import contextlib
from datetime import datetime
from threading import Thread
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from qwenft_operator.phases import Phase
from qwenft_operator.status import Progress, QwenFineTuneStatus

RunKey = tuple[str, str]  # (namespace, name)
# Creation to Training: validation takes seconds to minutes; queues can take hours.
TIME_TO_TRAINING_BUCKETS = (0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 14400)


class OperatorMetrics:
    """Every series the operator exports."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        reg = self.registry
        self.runs = Gauge("qwenft_operator_runs", "QwenFineTunes by phase", ["phase"], registry=reg)
        self.phase_transitions = Counter(
            "qwenft_operator_phase_transitions",
            "Phase changes of QwenFineTunes",
            ["from_phase", "to_phase"],
            registry=reg,
        )
        self.reconcile_errors = Counter(
            "qwenft_operator_reconcile_errors", "Failed reconciles", ["reason"], registry=reg
        )
        self.runs_retrying = Gauge(
            "qwenft_operator_runs_retrying",
            "Runs whose last reconcile failed on an API error, waiting to be tried again",
            registry=reg,
        )
        self.reconcile_duration = Histogram(
            "qwenft_operator_reconcile_duration_seconds",
            "Time spent in one reconcile",
            registry=reg,
        )
        self.time_to_training = Histogram(
            "qwenft_operator_time_to_training_seconds",
            "Seconds from a run's creation to its phase Training",
            buckets=TIME_TO_TRAINING_BUCKETS,
            registry=reg,
        )
        self.training_restarts = Counter(
            "qwenft_operator_training_restarts",
            "Gang restarts of multi-node training, by cause (Failure, Disruption)",
            ["cause"],
            registry=reg,
        )
        per_run = ["namespace", "run"]
        self.run_step = Gauge(
            "qwenft_operator_run_step", "Mirrored status.progress.step", per_run, registry=reg
        )
        self.run_total_steps = Gauge(
            "qwenft_operator_run_total_steps",
            "Mirrored status.progress.totalSteps",
            per_run,
            registry=reg,
        )
        self.run_loss = Gauge(
            "qwenft_operator_run_loss", "Mirrored status.progress.loss", per_run, registry=reg
        )
        self.run_tokens_per_second = Gauge(
            "qwenft_operator_run_tokens_per_second",
            "Mirrored status.progress.tokensPerSecond",
            per_run,
            registry=reg,
        )
        self._phases: dict[RunKey, str] = {}
        for phase in Phase:
            self.runs.labels(phase=phase.value).set(0)

    def observe_phase(
        self,
        key: RunKey,
        old: str | None,
        new: str | None,
        *,
        created: datetime | None = None,
        now: datetime | None = None,
    ) -> None:
        """Record the run's current phase (and the transition, when it changed)."""
        if new is None:
            return
        if old != new and old is not None:
            self.phase_transitions.labels(from_phase=old, to_phase=new).inc()
        if (
            new == Phase.TRAINING
            and old in (None, Phase.PENDING, Phase.VALIDATING)
            and created is not None
            and now is not None
        ):
            self.time_to_training.observe(max(0.0, (now - created).total_seconds()))
        self._phases[key] = new
        self._publish()

    def observe_restarts(self, old: QwenFineTuneStatus, new: QwenFineTuneStatus) -> None:
        """Count a gang restart the decision just recorded (``status.restarts`` grew)."""
        if (new.restarts or 0) > (old.restarts or 0) and new.last_restart is not None:
            self.training_restarts.labels(cause=new.last_restart.cause).inc()

    @property
    def tracked_runs(self) -> int:
        """Runs whose phase is known."""
        return len(self._phases)

    def forget(self, key: RunKey) -> None:
        """The run is gone: drop it from the phase counts and the per-run gauges."""
        self._phases.pop(key, None)
        self._publish()
        for gauge in (self.run_step, self.run_total_steps, self.run_loss):
            _remove(gauge, key)
        _remove(self.run_tokens_per_second, key)

    def mirror_progress(self, key: RunKey, progress: Progress) -> None:
        pairs = (
            (self.run_step, progress.step),
            (self.run_total_steps, progress.total_steps),
            (self.run_loss, progress.loss),
            (self.run_tokens_per_second, progress.tokens_per_second),
        )
        for gauge, value in pairs:
            if value is not None:
                gauge.labels(namespace=key[0], run=key[1]).set(value)

    def _publish(self) -> None:
        counts = {phase.value: 0 for phase in Phase}
        for phase in self._phases.values():
            counts[phase] = counts.get(phase, 0) + 1
        for phase, count in counts.items():
            self.runs.labels(phase=phase).set(count)

    def serve(self, port: int, addr: str = "0.0.0.0") -> tuple[WSGIServer, Thread]:
        """Serve ``/metrics`` on ``port`` from a daemon thread."""
        server, thread = start_http_server(port, addr=addr, registry=self.registry)
        return server, thread


def _remove(gauge: Gauge, key: RunKey) -> None:
    with contextlib.suppress(KeyError):
        gauge.remove(key[0], key[1])
