"""Helpers for the training tests: small datasets, config files, torchrun launches, log lines.

Not a test module: the ``test_train*`` modules import it (pytest puts this directory on
``sys.path``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import yaml
from support import free_port, poll

# Short, repeated dialogues: a tiny model learns them within a few steps.
DIALOGUES = [
    ("What is the capital of France?", "The capital of France is Paris."),
    (
        "Explain LoRA in one sentence.",
        "LoRA trains small low-rank matrices next to frozen weights.",
    ),
    ("你好！", "你好！请问有什么可以帮您？"),
    ("Thank you very much.", "You're welcome, have a nice day!"),
    ("Write a Python function that adds two numbers.", "def add(a, b):\n    return a + b\n"),
    ("Where do pods run?", "Kubernetes schedules pods onto nodes with GPUs."),
]


def write_dialogues(path: Path, count: int = 48) -> Path:
    with path.open("w", encoding="utf-8") as handle:
        for i in range(count):
            question, answer = DIALOGUES[i % len(DIALOGUES)]
            messages = [
                {"role": "user", "content": question},
                {"role": "assistant", "content": answer},
            ]
            handle.write(json.dumps({"messages": messages}, ensure_ascii=False) + "\n")
    return path


def merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def write_config(path: Path, model_dir: Path, data: Path, output_dir: Path, **extra: Any) -> Path:
    """A small fp32 LoRA TrainConfig; ``extra`` is merged in section by section."""
    base: dict[str, Any] = {
        "model": {"name_or_path": str(model_dir)},
        "data": {"path": str(data)},
        "method": "lora",
        "lora": {"r": 8, "alpha": 16, "dropout": 0.0},
        "training": {
            "max_steps": 6,
            "per_device_batch_size": 2,
            "gradient_accumulation_steps": 1,
            "learning_rate": 0.01,
            "warmup_ratio": 0.0,
            "max_seq_length": 128,
            "precision": "fp32",
            "gradient_checkpointing": False,
            "logging_steps": 1,
        },
        "checkpoint": {"save_steps": 100, "keep": 2},
        "output_dir": str(output_dir),
        "metrics_port": 0,
        "termination_log": str(output_dir.parent / "no-termination-log"),
    }
    path.write_text(yaml.safe_dump(merge(base, extra)), encoding="utf-8")
    return path


def train_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
        DS_ACCELERATOR="cpu",
        OMP_NUM_THREADS="1",
        PYTHONUNBUFFERED="1",
    )
    return env


def torchrun(nproc: int, config: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        str(nproc),
        "--master-port",
        str(free_port()),
        "-m",
        "qwenft_trainer.train",
        "--config",
        str(config),
        *extra,
    ]


def run(cmd: list[str], timeout: float = 300) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        cmd, env=train_env(), capture_output=True, text=True, timeout=timeout, check=False
    )
    if result.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} exited {result.returncode}\n{result.stdout[-3000:]}\n"
            f"{result.stderr[-6000:]}"
        )
    return result


def events(stdout: str, name: str | None = None) -> list[dict[str, Any]]:
    """The JSON log lines (``{"event": ...}``) in a run's stdout, optionally of one kind."""
    found = []
    for line in stdout.splitlines():
        start = line.find('{"event"')
        if start < 0:
            continue
        try:
            record = json.loads(line[start:])
        except json.JSONDecodeError:
            continue
        if name is None or record.get("event") == name:
            found.append(record)
    return found


class InProcessRun:
    """``qwenft_trainer.train.main`` run in this process, keeping the trained model object.

    ``initial`` holds every parameter as it was right after the model was prepared for its
    method (adapters added, nothing trained yet), so a test can tell what training moved.
    """

    def __init__(self, config: Path, *argv: str) -> None:
        import contextlib
        import io

        from qwenft_trainer.train import main

        self.model: Any = None
        self.initial: dict[str, Any] = {}

        def record(prepared: Any) -> None:
            self.model = prepared
            self.initial = {name: p.detach().clone() for name, p in prepared.named_parameters()}

        stdout, stderr = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            self.code = main(["--config", str(config), *argv], on_model_prepared=record)
        self.stdout, self.stderr = stdout.getvalue(), stderr.getvalue()

    def losses(self) -> list[float]:
        return [float(e["loss"]) for e in events(self.stdout, "train_log")]


class LiveRun:
    """A training command running in the background, its stdout lines collected as they come.

    For tests that act while a run is in progress: wait for a JSON log line with a deadline
    (:meth:`wait_for`), signal the process, then time how long it takes to exit.
    """

    def __init__(self, cmd: list[str], *, env: Mapping[str, str] | None = None) -> None:
        import tempfile
        import threading

        self.lines: list[str] = []
        # open as long as the run object: tests read it after the process ended
        self._stderr = tempfile.TemporaryFile("w+", encoding="utf-8")  # noqa: SIM115
        self.proc = subprocess.Popen(
            cmd,
            env=dict(env or train_env()),
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
            start_new_session=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)

    @property
    def stdout(self) -> str:
        return "".join(self.lines)

    @property
    def stderr(self) -> str:
        self._stderr.seek(0)
        return self._stderr.read()

    def wait_for(
        self, name: str, condition: Callable[[dict[str, Any]], bool], *, timeout: float
    ) -> dict[str, Any]:
        """The first ``name`` event meeting ``condition``; fails if the run ends without one."""

        def found() -> dict[str, Any] | None:
            match = next((e for e in events(self.stdout, name) if condition(e)), None)
            if match is None and self.proc.poll() is not None:
                raise AssertionError(
                    f"the run exited {self.proc.returncode} before that {name} event\n"
                    f"{self.stdout[-3000:]}\n{self.stderr[-6000:]}"
                )
            return match

        return poll(found, timeout=timeout, what=f"a {name} event", interval=0.02)

    def stop(self, sig: int, *, timeout: float, pid: int | None = None) -> float:
        """Send ``sig`` (to ``pid``, by default the command itself); seconds until it exited."""
        import os

        sent = time.monotonic()
        os.kill(pid or self.proc.pid, sig)
        self.proc.wait(timeout=timeout)
        elapsed = time.monotonic() - sent
        self._reader.join(timeout=10)
        return elapsed

    def kill(self) -> None:
        """SIGKILL whatever is left of the process tree (cleanup after a failed test)."""
        import contextlib
        import signal

        import psutil

        with contextlib.suppress(psutil.NoSuchProcess):
            family = psutil.Process(self.proc.pid).children(recursive=True)
            for member in [*family, psutil.Process(self.proc.pid)]:
                with contextlib.suppress(psutil.NoSuchProcess):
                    member.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=60)


def assert_same_adapter(output_dir: Path, reference_dir: Path) -> float:
    """Both adapters hold the same tensors (rtol 1e-5, atol 1e-6); the largest abs difference."""
    import torch
    from safetensors.torch import load_file

    got = load_file(output_dir / "adapter_model.safetensors")
    want = load_file(reference_dir / "adapter_model.safetensors")
    assert got.keys() == want.keys()
    for name, tensor in want.items():
        torch.testing.assert_close(got[name], tensor, rtol=1e-5, atol=1e-6, msg=name)
    return max((float((got[n] - t).abs().max()) for n, t in want.items() if t.numel()), default=0.0)
