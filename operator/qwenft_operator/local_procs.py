"""The processes of a local run: each step's command, its log, and what the user sees.

Each phase runs the same ``qwenft ...`` command line its cluster Job would, as a child of
this process (``python -m qwenft_operator.cli``, so the active environment is used). Full
output goes to ``<output>/logs/``; the console gets the phase lines, the trainer's progress
as one progress bar fed by its JSON log events, and the log's tail when a step fails.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

READY_TIMEOUT_SECONDS = 600
TAIL_LINES = 30


class StepError(RuntimeError):
    """A step's process failed; the message carries the end of its output."""


def qwenft_command(args: list[str]) -> list[str]:
    """A builder's ``["qwenft", ...]`` command line, run with this Python."""
    if not args or args[0] != "qwenft":
        raise ValueError(f"expected a qwenft command line, got {args[:2]}")
    return [sys.executable, "-m", "qwenft_operator.cli", *args[1:]]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false"}


def _tail(text: str) -> str:
    return "\n".join(text.splitlines()[-TAIL_LINES:])


def run_step(command: list[str], what: str) -> str:
    """Run a short step to completion, echoing its ``[tag]`` progress lines; its stdout."""
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env()
    )
    assert process.stderr is not None
    errors: deque[str] = deque(maxlen=TAIL_LINES)
    for line in process.stderr:
        errors.append(line.rstrip())
        if line.startswith("["):  # "[merge] ..." progress lines
            print(f"  {line.rstrip()}", flush=True)
    stdout = process.stdout.read() if process.stdout else ""
    if process.wait() != 0:
        raise StepError(
            f"{what} failed (exit {process.returncode}):\n{_tail(stdout)}\n" + "\n".join(errors)
        )
    report = _json(stdout)
    if report and "message" in report:
        print(f"  {report['message']}", flush=True)
    return stdout


def _json(text: str) -> dict[str, Any] | None:
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


def _event(line: str) -> dict[str, Any] | None:
    start = line.find('{"event"')
    return _json(line[start:]) if start >= 0 else None


def run_training(command: list[str], *, log: Path) -> None:
    """Run the trainer with a progress bar driven by its ``train_log`` events."""
    from tqdm import tqdm

    with log.open("w", encoding="utf-8") as sink:
        process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=sink, text=True, env=_env()
        )
        assert process.stdout is not None
        bar = tqdm(total=None, unit="step", desc="training", dynamic_ncols=True)
        for line in process.stdout:
            sink.write(line)
            event = _event(line)
            if event is None:
                continue
            kind = event.get("event")
            if kind == "train_log":
                bar.total = int(event.get("total_steps") or 0) or None
                bar.n = int(event.get("step", bar.n))
                bar.set_postfix(loss=f"{float(event.get('loss', 'nan')):.4f}", refresh=False)
                bar.refresh()
            elif kind in {"checkpoint", "eval_log", "train_end"}:
                detail = {k: v for k, v in event.items() if k in _SHOWN}
                bar.write(f"  {kind}: {json.dumps(detail)}")
        bar.close()
        code = process.wait()
    if code != 0:
        raise StepError(f"training failed (exit {code}); end of {log}:\n" + _tail(log.read_text()))


_SHOWN = {"step", "path", "eval_loss", "train_loss", "steps", "tokens_per_second", "wall_seconds"}


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    url: str

    def wait(self) -> None:
        self.process.wait()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _set_option(command: list[str], option: str, value: str) -> list[str]:
    out = list(command)
    if option in out:
        out[out.index(option) + 1] = value
    else:
        out += [option, value]
    return out


def start_server(command: list[str], *, log: Path, port: int | None) -> Server:
    """Start ``qwenft serve`` on loopback and wait until ``/readyz`` says it is ready."""
    port = port or _free_port()
    command = _set_option(_set_option(command, "--host", "127.0.0.1"), "--port", str(port))
    sink = log.open("wb")
    process = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT, env=_env())
    sink.close()
    server = Server(process, f"http://127.0.0.1:{port}")
    deadline = time.monotonic() + READY_TIMEOUT_SECONDS
    while True:
        if process.poll() is not None:
            raise StepError(
                f"the server exited with {process.returncode}:\n" + _tail(log.read_text())
            )
        try:
            if httpx.get(f"{server.url}/readyz", timeout=5).status_code == 200:
                return server
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            server.stop()
            raise StepError(f"the server was not ready after {READY_TIMEOUT_SECONDS}s; see {log}")
        time.sleep(0.25)
