"""Start, watch and stop the component processes, identified by PID and start time.

A PID alone can be reused by the system after a process exits, so each started process is
recorded with its start time from /proc; `stop` signals only a process whose PID and start
time both still match, which lets `hack/cluster.py down` run from another shell safely.
`send` and `paused` are for fault tests: a component killed, or frozen with SIGSTOP.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Process:
    """One started component: its name, argv, PID, /proc start time and log file."""

    name: str
    argv: tuple[str, ...]
    pid: int
    start_time: str
    log: Path

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "argv": list(self.argv), "log": str(self.log)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Process:
        return cls(
            name=data["name"],
            argv=tuple(data["argv"]),
            pid=int(data["pid"]),
            start_time=str(data["start_time"]),
            log=Path(data["log"]),
        )


def _stat(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat after the command name, or None if there is no such PID."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return raw.rsplit(")", 1)[1].split()


def spawn(name: str, argv: Sequence[str], log: Path, cwd: Path | None = None) -> Process:
    """Start argv in its own session with stdout and stderr appended to log."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        popen = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            start_new_session=True,
        )
    fields = _stat(popen.pid)
    # field 22 of stat is starttime; index 19 after the command name.
    start = fields[19] if fields else "?"
    return Process(name=name, argv=tuple(argv), pid=popen.pid, start_time=start, log=log)


def alive(proc: Process) -> bool:
    """True while the very process we started runs (not a zombie, not a reused PID)."""
    fields = _stat(proc.pid)
    if fields is None or fields[19] != proc.start_time:
        return False
    if fields[0] == "Z":
        _reap(proc.pid)
        return False
    return True


def _reap(pid: int) -> None:
    """Collect the exit status of a child of this process, if it is one."""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def stop(procs: Sequence[Process], timeout: float = 5.0) -> None:
    """Stop the processes one after another, in order: SIGTERM, then SIGKILL after timeout.

    In order, because kube-apiserver drains for up to 60 s while clients still hold watches;
    with kwok and the controllers gone first it exits in about a second.
    """
    for proc in procs:
        if not alive(proc):
            continue
        os.kill(proc.pid, signal.SIGTERM)
        with contextlib.suppress(ProcessLookupError):  # a paused one handles it once resumed
            os.kill(proc.pid, signal.SIGCONT)
        if not _wait_gone(proc, timeout):
            os.kill(proc.pid, signal.SIGKILL)
            _wait_gone(proc, 5.0)


def _wait_gone(proc: Process, timeout: float) -> bool:
    """Poll until the process is gone; False if it is still there at the deadline."""
    deadline = time.monotonic() + timeout
    while alive(proc):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def send(proc: Process, sig: signal.Signals) -> bool:
    """Send sig to the very process we started; False if it is gone already."""
    if not alive(proc):
        return False
    os.kill(proc.pid, sig)
    return True


def kill(proc: Process, timeout: float = 10.0) -> None:
    """SIGKILL, as a crash would end it, and wait until it is gone (reaped if our child)."""
    if send(proc, signal.SIGKILL) and not _wait_gone(proc, timeout):
        raise TimeoutError(f"{proc.name} (pid {proc.pid}) still there {timeout:.0f}s after SIGKILL")


def paused(proc: Process) -> bool:
    """True while the process is stopped by a signal (state T), e.g. after SIGSTOP."""
    fields = _stat(proc.pid)
    return fields is not None and fields[19] == proc.start_time and fields[0] == "T"


def rss_bytes(proc: Process) -> int:
    """Resident memory of a running process (VmRSS), 0 when it is gone."""
    if not alive(proc):
        return 0
    for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def tail(path: Path, lines: int = 40) -> str:
    """The last lines of a log file ('' if it does not exist)."""
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 256 * lines))
            text = f.read().decode(errors="replace")
    except FileNotFoundError:
        return ""
    return "\n".join(text.splitlines()[-lines:])
