"""A real Prometheus server for the monitoring tests, and the queries the chart ships.

Starts the Debian package's `prometheus` on a free loopback port with its own data
directory, scraping static targets every second, and talks to its HTTP API. Also lists every
PromQL expression the Grafana dashboard and the alert rules contain, with the selectors
inside each alert, so a test can prove each one returns data from real exporters.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from support import free_port

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "qwenft-operator"
sys.path.insert(0, str(ROOT / "hack"))

import gen_dashboard  # noqa: E402

# A vector selector: a metric name with optional {matchers}, not followed by "(" (a function).
SELECTOR = re.compile(r"\b([a-zA-Z_:][a-zA-Z0-9_:]*)(?![a-zA-Z0-9_:])(\{[^}]*\})?(?!\s*\()")
# Label lists of aggregations and vector matching: names there are labels, not metrics.
LABEL_LIST = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
# PromQL words that look like metric names.
KEYWORDS = {"and", "or", "unless", "by", "without", "on", "ignoring", "bool", "offset"}
KEYWORDS |= {"group_left", "group_right", "le", "inf", "nan"}


@dataclass
class Prometheus:
    """A running Prometheus; stop() ends it."""

    url: str
    process: subprocess.Popen[bytes]
    log: Path
    targets: dict[str, str] = field(default_factory=dict)

    @classmethod
    def start(cls, workdir: Path, targets: dict[str, str], timeout: float = 60) -> Prometheus:
        """Scrape each job -> host:port target every second."""
        binary = shutil.which("prometheus")
        if binary is None:
            raise RuntimeError("prometheus not found; install it with: apt-get install prometheus")
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "scrape_configs": [
                {"job_name": job, "static_configs": [{"targets": [target]}]}
                for job, target in targets.items()
            ],
        }
        (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
        port = free_port()
        log = workdir / "prometheus.log"
        process = subprocess.Popen(
            [
                binary,
                f"--config.file={workdir / 'prometheus.yml'}",
                f"--storage.tsdb.path={workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--storage.tsdb.retention.time=1h",
            ],
            stdout=log.open("wb"),
            stderr=subprocess.STDOUT,
        )
        server = cls(url=f"http://127.0.0.1:{port}", process=process, log=log, targets=targets)
        deadline = time.monotonic() + timeout
        while not server.ready():
            if process.poll() is not None or time.monotonic() > deadline:
                server.stop()
                raise RuntimeError(f"prometheus did not become ready:\n{server.log_tail()}")
            time.sleep(0.2)
        return server

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def query(self, expr: str, at: float | None = None) -> dict[str, Any]:
        """The API's whole answer to an instant query (status, data or error)."""
        params = {"query": expr}
        if at is not None:
            params["time"] = f"{at:.3f}"
        url = f"{self.url}/api/v1/query?{urllib.parse.urlencode(params)}"
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                answer: dict[str, Any] = json.load(response)
        except urllib.error.HTTPError as err:  # 400/422: the query does not parse or evaluate
            answer = json.load(err)
        return answer

    def series(self, expr: str, at: float | None = None) -> list[dict[str, Any]]:
        """The result vector of an instant query; raises when the query fails."""
        answer = self.query(expr, at)
        if answer.get("status") != "success":
            raise AssertionError(f"{expr!r}: {answer.get('errorType')}: {answer.get('error')}")
        result: list[dict[str, Any]] = answer["data"]["result"]
        return result

    def query_range(self, expr: str, start: float, end: float, step: float = 1.0) -> list[Any]:
        params = {"query": expr, "start": f"{start:.3f}", "end": f"{end:.3f}", "step": str(step)}
        url = f"{self.url}/api/v1/query_range?{urllib.parse.urlencode(params)}"
        with urllib.request.urlopen(url, timeout=10) as response:
            result: list[Any] = json.load(response)["data"]["result"]
        return result

    def up(self, job: str) -> bool:
        return any(s["value"][1] == "1" for s in self.series(f'up{{job="{job}"}}'))


def dashboard_queries(run: str, model: str, rate_interval: str = "30s") -> list[str]:
    """Every panel query of the shipped dashboard with its Grafana variables filled in."""
    dashboard = json.loads((CHART / "dashboards" / "qwenft.json").read_text())
    return [
        q.replace("$__rate_interval", rate_interval)
        .replace("$run", run)  # a single selected value, as Grafana substitutes it
        .replace("$model", model)
        for q in gen_dashboard.queries(dashboard)
    ]


def variable_metrics() -> list[str]:
    """The series the dashboard's `label_values(metric, label)` variables read."""
    dashboard = json.loads((CHART / "dashboards" / "qwenft.json").read_text())
    found = []
    for query in gen_dashboard.variable_queries(dashboard).values():
        inner = query.removeprefix("label_values(").removesuffix(")")
        metric, label = (part.strip() for part in inner.split(","))
        found.append(f"count by ({label}) ({metric})")
    return found


def alert_rules() -> dict[str, str]:
    """Alert name -> expression, from the rule file the PrometheusRule embeds."""
    groups = yaml.safe_load((CHART / "files" / "alerts.yaml").read_text())["groups"]
    return {rule["alert"]: rule["expr"] for group in groups for rule in group["rules"]}


def selectors(expr: str) -> list[str]:
    """The vector selectors inside an expression (metric name plus its matchers).

    An alert's condition is usually false on healthy data, so "returns a series" can't be
    asked of the alert itself; it can be asked of every series the condition reads.
    """

    def blank(match: re.Match[str]) -> str:
        return " " * len(match.group())

    found = []
    # Same-length blanks keep offsets, so a match in `masked` slices `expr` unchanged.
    masked = re.sub(r'"[^"]*"', lambda m: '"' + "_" * (len(m.group()) - 2) + '"', expr)
    masked = re.sub(r"\[[^\]]*\]", blank, masked)
    masked = LABEL_LIST.sub(blank, masked)
    for match in SELECTOR.finditer(masked):
        name = match.group(1)
        if name.lower() in KEYWORDS:
            continue
        start, end = match.span()
        found.append(expr[start:end].strip())
    return list(dict.fromkeys(found))
