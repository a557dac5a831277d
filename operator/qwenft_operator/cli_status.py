"""``qwenft status RUN``: a run's phase, progress, loss, ETA, checkpoints and endpoint.

Reads the ``QwenFineTune`` from the current kube context (``$KUBECONFIG``, or the pod's
service account inside a cluster) and prints its status as the operator wrote it;
``--watch`` prints it again each time it changes, until the run is Ready, Succeeded or
Failed. :func:`format_status` is pure (a stored object and the time in, text out); the
API reading is :func:`qwenft_operator.kube.get_run`.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from kubernetes.client.rest import ApiException
from kubernetes.config import ConfigException
from pydantic import ValidationError

from qwenft_operator import kube
from qwenft_operator.conditions import FAILED, get_condition
from qwenft_operator.phases import TERMINAL_PHASES, Phase
from qwenft_operator.status import CheckpointRecord, Progress, QwenFineTuneStatus

BAR_WIDTH = 30
# --watch stops at these phases: nothing changes any more without a new spec.
SETTLED_PHASES = TERMINAL_PHASES | {Phase.READY}
EXIT_NOT_FOUND = 1
EXIT_INVALID = 2

EXAMPLES = """\
examples:
  qwenft status support-lora
  qwenft status support-lora -n ml --watch
  KUBECONFIG=~/.kube/gpu-cluster qwenft status qlora-72b -n research
"""


def format_duration(seconds: float) -> str:
    """``2h 05m``, ``12m 30s``, ``45s``."""
    total = max(0, round(seconds))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h {minutes:02d}m"
    if minutes:
        return f"{minutes}m {secs:02d}s"
    return f"{secs}s"


def progress_bar(step: int, total: int, width: int = BAR_WIDTH) -> str:
    """``[#########.....]  90/150  60%``."""
    share = min(1.0, step / total) if total > 0 else 0.0
    filled = int(share * width)
    return f"[{'#' * filled}{'.' * (width - filled)}] {step}/{total} {share * 100:3.0f}%"


def _ago(when: datetime, now: datetime) -> str:
    age = format_duration((now - when).total_seconds())
    return f"{when.strftime('%Y-%m-%dT%H:%M:%SZ')} ({age} ago)"


def _progress_lines(progress: Progress | None) -> list[tuple[str, str]]:
    if progress is None or progress.step is None:
        return [("Progress", "no training step reported yet")]
    step = progress.step
    if progress.total_steps:
        bar = progress_bar(step, progress.total_steps)
    else:
        bar = f"step {step} (total not known yet)"
    if progress.epoch is not None:
        bar += f"  epoch {progress.epoch:.2f}"
    lines = [("Progress", bar)]
    loss = [] if progress.loss is None else [f"{progress.loss:.4f}"]
    if progress.eval_loss is not None:
        loss.append(f"eval {progress.eval_loss:.4f}")
    if loss:
        lines.append(("Loss", "  ".join(loss)))
    rates = []
    if progress.learning_rate is not None:
        rates.append(f"lr {progress.learning_rate:.2e}")
    if progress.tokens_per_second is not None:
        rates.append(f"{progress.tokens_per_second:,.0f} tokens/s")
    if rates:
        lines.append(("Rate", "  ".join(rates)))
    if progress.eta_seconds is not None:
        lines.append(("ETA", format_duration(progress.eta_seconds)))
    return lines


def _checkpoint_line(checkpoints: list[CheckpointRecord]) -> str:
    if not checkpoints:
        return "none yet"
    newest = max(checkpoints, key=lambda c: c.step)
    return f"{len(checkpoints)}, newest step {newest.step} at {newest.path}"


def format_status(run: Mapping[str, Any], now: datetime) -> str:
    """The status of a stored ``QwenFineTune`` object as aligned text."""
    meta = run.get("metadata") or {}
    status = QwenFineTuneStatus.model_validate(run.get("status") or {})
    name = f"{meta.get('namespace', 'default')}/{meta.get('name', '?')}"
    generation = meta.get("generation")
    observed = status.observed_generation
    if observed is not None and generation is not None and observed != generation:
        name += f"  (generation {generation}; operator has seen {observed})"
    lines: list[tuple[str, str]] = [("Run", name)]
    lines.append(("Phase", str(status.phase) if status.phase else "Pending (not seen yet)"))
    failed = get_condition(status.conditions, FAILED)
    if status.phase == Phase.FAILED and failed is not None:
        lines.append(("Why", f"{failed.reason}: {failed.message}"))
    if status.phase in (Phase.TRAINING, Phase.SUSPENDED) or status.progress is not None:
        lines.extend(_progress_lines(status.progress))
    if status.resumed_from_step:
        lines.append(("Resumed", f"from step {status.resumed_from_step}"))
    if status.restarts:
        lines.append(
            ("Restarts", f"{status.restarts} ({status.disruption_restarts or 0} disruptions)")
        )
    lines.append(("Checkpoints", _checkpoint_line(status.checkpoints)))
    if status.start_time is not None:
        lines.append(("Started", _ago(status.start_time, now)))
    if status.completion_time is not None:
        lines.append(("Completed", _ago(status.completion_time, now)))
    if status.outputs is not None:
        for label, path in (("Adapter", status.outputs.adapter), ("Merged", status.outputs.merged)):
            if path:
                lines.append((label, path))
    endpoint = status.endpoint
    if endpoint is not None and endpoint.url:
        lines.append(("Endpoint", f"{endpoint.url}  (model {endpoint.model_name})"))
    else:
        lines.append(("Endpoint", "none yet"))
    if status.smoke_test is not None:
        smoke = status.smoke_test
        verdict = "passed" if smoke.passed else f"{smoke.failed} failed"
        lines.append(("Smoke test", f"{smoke.total} prompts, {verdict}"))
    width = max(len(label) for label, _ in lines) + 2
    text = [f"{label + ':':<{width}}{value}" for label, value in lines]
    if status.conditions:
        text += ["", "Conditions:", _conditions_table(status, now)]
    return "\n".join(text) + "\n"


def _conditions_table(status: QwenFineTuneStatus, now: datetime) -> str:
    rows = [("TYPE", "STATUS", "REASON", "AGE", "MESSAGE")]
    for c in status.conditions:
        age = format_duration((now - c.last_transition_time).total_seconds())
        rows.append((c.type, c.status, c.reason, age, c.message))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    return "\n".join(
        "  "
        + "  ".join(cell.ljust(w) for cell, w in zip(row[:4], widths, strict=True))
        + "  "
        + row[4]
        for row in rows
    ).rstrip()


def watch(
    read: Callable[[], Mapping[str, Any] | None],
    show: Callable[[str], None],
    *,
    interval: float,
    clock: Callable[[], datetime],
    sleep: Callable[[float], None] = time.sleep,
) -> int:
    """Show the run each time its resourceVersion changes, until it settles or is gone."""
    seen: str | None = None
    while True:
        run = read()
        if run is None:
            show("the run is gone\n")
            return EXIT_NOT_FOUND
        version = str((run.get("metadata") or {}).get("resourceVersion"))
        if version != seen:
            show(("" if seen is None else "\n") + format_status(run, clock()))
            seen = version
        phase = (run.get("status") or {}).get("phase")
        if phase in SETTLED_PHASES:
            return 0
        sleep(interval)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="qwenft status",
        description="Show a QwenFineTune's phase, training progress, loss, ETA, checkpoints, "
        "endpoint and conditions, from the current kube context.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("run", help="name of the QwenFineTune")
    parser.add_argument("-n", "--namespace", default="default", help="its namespace")
    parser.add_argument(
        "-w", "--watch", action="store_true", help="print again on each change until it settles"
    )
    parser.add_argument(
        "--interval", type=float, default=2.0, help="seconds between looks with --watch"
    )
    parser.add_argument("--kubeconfig", help="kubeconfig file (default: $KUBECONFIG)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        clients = kube.Clients.connect(args.kubeconfig)
    except ConfigException as err:
        print(f"qwenft status: no cluster to talk to: {err}", file=sys.stderr)
        return EXIT_NOT_FOUND

    def read() -> dict[str, Any] | None:
        return kube.get_run(clients, args.namespace, args.run)

    def clock() -> datetime:
        return datetime.now(UTC)

    try:
        run = read()
        if run is None:
            print(
                f"qwenft status: no QwenFineTune '{args.run}' in namespace '{args.namespace}'",
                file=sys.stderr,
            )
            return EXIT_NOT_FOUND
        if not args.watch:
            sys.stdout.write(format_status(run, clock()))
            return 0
        return watch(read, _print, interval=args.interval, clock=clock)
    except ApiException as err:
        print(f"qwenft status: the API server refused: {err.status} {err.reason}", file=sys.stderr)
        return EXIT_NOT_FOUND
    except ValidationError as err:
        print(f"qwenft status: the run's status can't be read: {err}", file=sys.stderr)
        return EXIT_INVALID
    except KeyboardInterrupt:
        return 130
    finally:
        clients.close()


def _print(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


if __name__ == "__main__":
    raise SystemExit(main())
