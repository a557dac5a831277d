"""Prometheus series of the inference server, named as in docs/metrics.md.

Each app gets its own registry, so several servers (the tests, the benchmark) can live in
one process without sharing counters.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


class ServeMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "qwenft_serve_requests",
            "Chat completion requests by HTTP status code.",
            ["model", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "qwenft_serve_request_duration_seconds",
            "Chat completion latency, from request to last byte.",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.prompt_tokens = Counter(
            "qwenft_serve_prompt_tokens",
            "Prompt tokens of completed requests.",
            ["model"],
            registry=self.registry,
        )
        self.generated_tokens = Counter(
            "qwenft_serve_generated_tokens",
            "Tokens generated.",
            ["model"],
            registry=self.registry,
        )
        self.in_flight = Gauge(
            "qwenft_serve_in_flight_requests",
            "Chat completion requests admitted and not yet finished (running or queued).",
            registry=self.registry,
        )

    def observe(
        self, *, model: str, status: int, seconds: float, prompt: int = 0, generated: int = 0
    ) -> None:
        self.requests.labels(model=model, status=str(status)).inc()
        self.latency.labels(model=model).observe(seconds)
        if prompt:
            self.prompt_tokens.labels(model=model).inc(prompt)
        if generated:
            self.generated_tokens.labels(model=model).inc(generated)

    def render(self) -> bytes:
        return bytes(generate_latest(self.registry))
