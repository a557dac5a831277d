"""Benchmark ``qwenft serve`` against a naive one-request-at-a-time ``generate`` loop.

Starts the server as a subprocess on a free loopback port, sends the same chat requests at
client concurrency 1, 4 and 16 (greedy, ``ignore_eos`` so every request generates exactly
``--max-tokens`` tokens), and compares requests/s and p50/p99 latency with calling
``model.generate`` on the same model, prompts and lengths one request after another.

    python bench/bench_serve.py                                    # tiny model, CPU
    python bench/bench_serve.py --model-arch qwen2.5-0.5b --device cuda --requests 64

``qwen2.5-0.5b`` is the Qwen2.5-0.5B decoder (24 layers, hidden 896, GQA 14/2 heads) with
random weights and the tiny tokenizer's vocabulary; no download is needed.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from support import free_port  # shared with the tests

PROMPTS = [
    "What is the capital of France?",
    "Explain LoRA in one sentence.",
    "Write a Python function that adds two numbers.",
    "请用一句话解释什么是微调。",
    "Kubernetes schedules pods onto nodes with GPUs. Why?",
    "Thank you very much.",
]
QWEN25_05B = {
    "hidden_size": 896,
    "intermediate_size": 4864,
    "num_hidden_layers": 24,
    "num_attention_heads": 14,
    "num_key_value_heads": 2,
    "max_position_embeddings": 32768,
}


@dataclass(frozen=True)
class Result:
    mode: str
    concurrency: int
    latencies: list[float]
    wall: float
    tokens: int

    @property
    def rps(self) -> float:
        return len(self.latencies) / self.wall

    def pct(self, q: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def build_model(arch: str, root: Path) -> Path:
    from qwenft_trainer.tiny import TinyModelSpec, build_tiny_qwen, ensure_tiny_qwen

    if arch == "tiny":
        return ensure_tiny_qwen(root / "tiny-qwen")
    fields = {k: v for k, v in QWEN25_05B.items() if k in TinyModelSpec.__dataclass_fields__}
    return build_tiny_qwen(root / arch, TinyModelSpec(**fields))


class NaiveLoop:
    """The baseline: the same model in this process, one ``generate`` call at a time."""

    def __init__(self, model_dir: Path, device: str, threads: int) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        torch.set_num_threads(threads)
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        dtype = torch.bfloat16 if device.startswith("cuda") else "auto"
        self.model = AutoModelForCausalLM.from_pretrained(
            model_dir, dtype=dtype, device_map=device
        ).eval()

    def run(self, requests: int, max_tokens: int) -> Result:
        import torch

        latencies = []
        started = time.perf_counter()
        for i in range(requests):
            t0 = time.perf_counter()
            messages = [{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}]
            text = self.tokenizer.apply_chat_template(
                messages, add_generation_prompt=True, tokenize=False
            )
            batch = self.tokenizer(text, return_tensors="pt", add_special_tokens=False)
            with torch.inference_mode():
                # The server's ignore_eos settings: exactly max_tokens tokens per request.
                self.model.generate(
                    **batch.to(self.model.device),
                    max_new_tokens=max_tokens,
                    do_sample=False,
                    eos_token_id=None,
                )
            if self.model.device.type == "cuda":
                torch.cuda.synchronize()
            latencies.append(time.perf_counter() - t0)
        wall = time.perf_counter() - started
        return Result("naive generate", 1, latencies, wall, requests * max_tokens)


async def load(url: str, concurrency: int, requests: int, max_tokens: int) -> Result:
    """``requests`` chat completions, at most ``concurrency`` in flight."""
    gate = asyncio.Semaphore(concurrency)
    latencies: list[float] = []
    tokens = 0

    async def one(client: httpx.AsyncClient, i: int) -> None:
        nonlocal tokens
        body = {
            "model": "bench",
            "messages": [{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}],
            "max_tokens": max_tokens,
            "temperature": 0,
            "ignore_eos": True,
        }
        async with gate:
            t0 = time.perf_counter()
            response = await client.post(f"{url}/v1/chat/completions", json=body)
            response.raise_for_status()
            latencies.append(time.perf_counter() - t0)
            tokens += response.json()["usage"]["completion_tokens"]

    async with httpx.AsyncClient(timeout=600) as client:
        started = time.perf_counter()
        await asyncio.gather(*(one(client, i) for i in range(requests)))
        wall = time.perf_counter() - started
    return Result("server", concurrency, latencies, wall, tokens)


def start_server(
    model_dir: Path, device: str, max_concurrency: int, max_batch_size: int, threads: int
) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    command = [
        sys.executable, "-m", "qwenft_trainer.serve", "--model", str(model_dir),
        "--served-model-name", "bench", "--host", "127.0.0.1", "--port", str(port),
        "--device", device, "--max-concurrency", str(max_concurrency), "--max-queue", "256",
        "--max-batch-size", str(max_batch_size),
        "--log-level", "warning",
    ]  # fmt: skip
    process = subprocess.Popen(
        command, env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": str(threads)}
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 600
    while True:
        if process.poll() is not None:
            raise SystemExit(f"server exited with {process.returncode}")
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return process, url
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            process.kill()
            raise SystemExit("server not ready after 600 s")
        time.sleep(0.2)


def table(pairs: list[tuple[Result, Result]]) -> str:
    """One row per measurement; 'vs naive' divides by the loop run just before it."""
    head = (
        f"{'mode':<16}{'conc':>5}{'reqs':>6}{'req/s':>9}{'p50 s':>9}{'p99 s':>9}{'tok/s':>9}"
        f"{'vs naive':>10}"
    )
    rows = [head, "-" * len(head)]
    for loop, server in pairs:
        for r in (loop, server):
            rows.append(
                f"{r.mode:<16}{r.concurrency:>5}{len(r.latencies):>6}{r.rps:>9.2f}"
                f"{r.pct(0.5):>9.3f}{r.pct(0.99):>9.3f}{r.tokens / r.wall:>9.1f}"
                f"{r.rps / loop.rps:>9.2f}x"
            )
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-arch", choices=["tiny", "qwen2.5-0.5b"], default="tiny")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--requests", type=int, default=32, help="requests per level")
    parser.add_argument("--max-tokens", type=int, default=32, help="tokens generated per request")
    parser.add_argument("--concurrency", default="1,4,16", help="client concurrency levels")
    parser.add_argument(
        "--server-concurrency",
        type=int,
        default=1,
        help="server --max-concurrency (one batched generate call at a time is fastest)",
    )
    parser.add_argument("--max-batch-size", type=int, default=16, help="server --max-batch-size")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads, the same for the loop and the server (1 suits the tiny model)",
    )
    parser.add_argument(
        "--work-dir", type=Path, help="where to build the model (default: a temp dir)"
    )
    args = parser.parse_args(argv)
    levels = [int(level) for level in args.concurrency.split(",")]

    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp:
        model_dir = build_model(args.model_arch, args.work_dir or Path(tmp))
        print(f"model {args.model_arch} at {model_dir}, device {args.device}", flush=True)
        loop = NaiveLoop(model_dir, args.device, args.threads)
        loop.run(2, args.max_tokens)  # warm-up
        process, url = start_server(
            model_dir, args.device, args.server_concurrency, args.max_batch_size, args.threads
        )
        pairs = []
        try:
            asyncio.run(load(url, 1, 2, args.max_tokens))  # warm-up
            for level in levels:
                # The loop runs right before each level (never at the same time), so both
                # see the same machine load: this host may be shared.
                baseline = loop.run(args.requests, args.max_tokens)
                served = asyncio.run(load(url, level, args.requests, args.max_tokens))
                pairs.append((baseline, served))
                print(
                    f"concurrency {level}: server {served.rps:.2f} req/s, "
                    f"naive loop {baseline.rps:.2f} req/s",
                    flush=True,
                )
        finally:
            process.terminate()
            process.wait(timeout=30)
    print()
    print(
        f"{args.model_arch} on {args.device}, {args.max_tokens} tokens per request, "
        f"server --max-concurrency {args.server_concurrency} --max-batch-size "
        f"{args.max_batch_size}, {args.threads} torch thread(s)"
    )
    print(table(pairs))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
