"""Start and stop one local control plane, and reattach to it from another process.

`ControlPlane.start(workdir)` brings up etcd, kube-apiserver, kube-controller-manager,
kube-scheduler and kwok on free 127.0.0.1 ports, registers the fake nodes, and returns once
the API server is ready, both controllers are healthy, every node is Ready and the default
service account exists. Its state (PIDs, ports, paths) is saved to `<workdir>/state.json`,
so `ControlPlane.load(workdir).stop()` works from any shell.

For fault tests one component at a time can be killed (`kill`), frozen and thawed
(`pause`, `resume`: SIGSTOP and SIGCONT), started again (`start_component`) or restarted
(`restart`). A component starts again with the command line it was started with, so the
same flags, ports, certificates and data directory; each start waits for that component's
readiness check (`devcluster.probes`) with a deadline, and the new PID goes to state.json.
"""

from __future__ import annotations

import json
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from devcluster import components, kueue, probes, processes
from devcluster.api import Api, http_ok, insecure_context, wait_for
from devcluster.binaries import HACK_DIR, require_binaries
from devcluster.binaries import bin_dir as default_bin_dir
from devcluster.nodes import build_nodes
from devcluster.pki import write_kubeconfig, write_pki
from devcluster.processes import Process

STATE_FILE = "state.json"
COMPONENTS = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok")


class ClusterError(RuntimeError):
    """The control plane did not come up; the message carries the failing log tail."""


def free_ports(count: int) -> list[int]:
    """Ports the kernel hands out for 127.0.0.1:0, all held open at once so they differ."""
    socks = [socket.socket() for _ in range(count)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] devcluster: {msg}", file=sys.stderr, flush=True)


@dataclass
class ControlPlane:
    """A running (or stopped) local control plane and where its pieces live."""

    workdir: Path
    server: str
    token: str
    ca_file: Path
    kubeconfig: Path
    bin_dir: Path
    processes: list[Process] = field(default_factory=list)
    ports: dict[str, int] = field(default_factory=dict)
    started_seconds: float = 0.0

    # ---- lifecycle -------------------------------------------------------------------
    @classmethod
    def start(
        cls,
        workdir: Path | None = None,
        *,
        bin_dir: Path | None = None,
        gpu_nodes: int = 4,
        timeout: float = 180.0,
        owner_pid: int | None = None,
        say: Callable[[str], None] = _say,
        with_kueue: bool = False,
    ) -> ControlPlane:
        """Start everything and wait until it is usable; on failure stop it and raise.

        With owner_pid, a watchdog stops the cluster if that process dies without stopping it.
        With with_kueue, Kueue's manager runs too (:mod:`devcluster.kueue`).
        """
        began = time.monotonic()
        bins = bin_dir or default_bin_dir()
        require_binaries(bins)
        if with_kueue:
            kueue.require(bins)
        workdir = Path(workdir or tempfile.mkdtemp(prefix="qwenft-cluster-"))
        workdir.mkdir(parents=True, exist_ok=True)
        pki = write_pki(workdir / "pki")
        names = ("etcd", "etcd_peer", "apiserver", "controller_manager", "scheduler", "kwok")
        ports = dict(zip(names, free_ports(len(names)), strict=True))
        server = f"https://127.0.0.1:{ports['apiserver']}"
        lay = components.Layout(
            bin_dir=bins,
            workdir=workdir,
            pki=pki,
            kubeconfig=write_kubeconfig(workdir / "kubeconfig", server=server, pki=pki),
            etcd_port=ports["etcd"],
            etcd_peer_port=ports["etcd_peer"],
            apiserver_port=ports["apiserver"],
            controller_manager_port=ports["controller_manager"],
            scheduler_port=ports["scheduler"],
            kwok_port=ports["kwok"],
        )
        components.write_scheduler_config(lay)
        components.write_kwok_logs_config(lay)
        cp = cls(
            workdir=workdir,
            server=server,
            token=pki.token,
            ca_file=pki.ca_cert,
            kubeconfig=lay.kubeconfig,
            bin_dir=bins,
            ports=ports,
        )
        try:
            if owner_pid is not None:
                watchdog = [sys.executable, "-m", "devcluster.watchdog", str(owner_pid)]
                cp._spawn("watchdog", [*watchdog, str(workdir)], cwd=HACK_DIR)
            cp._boot(lay, gpu_nodes, began + timeout, say)
            if with_kueue:
                kueue.start(cp, say=say)
        except BaseException:
            cp.stop(remove_workdir=False)
            raise
        cp.started_seconds = time.monotonic() - began
        cp.save()
        say(f"ready in {cp.started_seconds:.1f}s: KUBECONFIG={cp.kubeconfig}")
        return cp

    def _boot(
        self, lay: components.Layout, gpu_nodes: int, deadline: float, say: Callable[[str], None]
    ) -> None:
        api = Api(self.server, self.token, self.ca_file)
        self._spawn("etcd", components.etcd(lay))
        self._wait("etcd", lambda: http_ok(f"http://127.0.0.1:{lay.etcd_port}/health"), deadline)
        self._spawn("kube-apiserver", components.kube_apiserver(lay))
        self._wait("kube-apiserver", lambda: api.request("GET", "/readyz")[0] == 200, deadline)
        say(f"API server ready at {self.server}")
        self._spawn("kube-controller-manager", components.kube_controller_manager(lay))
        self._spawn("kube-scheduler", components.kube_scheduler(lay))
        self._spawn("kwok", components.kwok(lay))
        for node in build_nodes(gpu_nodes):
            api.create("/api/v1/nodes", node)
        tls = insecure_context()
        cm_url = f"https://127.0.0.1:{lay.controller_manager_port}/healthz"
        sched_url = f"https://127.0.0.1:{lay.scheduler_port}/healthz"
        self._wait("kube-controller-manager", lambda: http_ok(cm_url, tls), deadline)
        self._wait("kube-scheduler", lambda: http_ok(sched_url, tls), deadline)
        self._wait("kwok", lambda: _nodes_ready(api, gpu_nodes + 1), deadline)
        self._wait(
            "kube-controller-manager",
            lambda: (
                api.request("GET", "/api/v1/namespaces/default/serviceaccounts/default")[0] == 200
            ),
            deadline,
        )

    def _spawn(self, name: str, argv: list[str], cwd: Path | None = None) -> None:
        log = self.workdir / "logs" / f"{name}.log"
        self.processes.append(processes.spawn(name, argv, log, cwd=cwd))
        self.save()  # so that `down` can stop a half-started cluster too

    def _wait(self, name: str, check: Callable[[], bool], deadline: float) -> None:
        """Wait for check(); fail at once, with the log tail, if the component died."""

        def ready() -> bool:
            for proc in self.processes:
                if not processes.alive(proc):
                    raise ClusterError(
                        f"{proc.name} exited during start-up; end of {proc.log}:\n"
                        + self.log_tail(proc.name)
                    )
            return check()

        try:
            wait_for(name, ready, deadline)
        except TimeoutError as err:
            raise ClusterError(
                f"{err}; end of {self.log_path(name)}:\n{self.log_tail(name)}"
            ) from None

    def stop(self, *, remove_workdir: bool = True) -> None:
        """Stop exactly the processes this control plane started (newest first)."""
        processes.stop(list(reversed(self.processes)))
        if remove_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    # ---- faults: one component killed, paused, started again -------------------------
    def process(self, component: str) -> Process:
        """The record of one component's process; ClusterError naming the known ones."""
        for proc in self.processes:
            if proc.name == component:
                return proc
        known = ", ".join(p.name for p in self.processes if p.name != "watchdog")
        raise ClusterError(f"no component {component!r} in this control plane (known: {known})")

    def kill(self, component: str) -> None:
        """SIGKILL one component, as a crash would end it, and wait until it is gone."""
        processes.kill(self.process(component))

    def pause(self, component: str, *, timeout: float = 10.0) -> None:
        """Freeze one component with SIGSTOP: it keeps its sockets open and answers nothing."""
        proc = self._running(component)
        processes.send(proc, signal.SIGSTOP)
        wait_for(f"{component} to stop", lambda: processes.paused(proc), time.monotonic() + timeout)

    def resume(self, component: str, *, timeout: float = 60.0) -> None:
        """SIGCONT a paused component and wait until it is ready again."""
        since = datetime.now(UTC)
        processes.send(self._running(component), signal.SIGCONT)
        self.wait_ready(component, since=since, timeout=timeout)

    def start_component(self, component: str, *, timeout: float = 120.0) -> None:
        """Start a stopped component with its recorded command line; wait until it is ready."""
        proc = self.process(component)
        if processes.alive(proc):
            raise ClusterError(f"{component} is running (pid {proc.pid}); use restart")
        if component == "watchdog":
            raise ClusterError("the watchdog is started by `ControlPlane.start(owner_pid=...)`")
        since = datetime.now(UTC)
        self.processes[self.processes.index(proc)] = processes.spawn(component, proc.argv, proc.log)
        self.save()
        self.wait_ready(component, since=since, timeout=timeout)

    def restart(self, component: str, *, timeout: float = 120.0) -> None:
        """Stop one component (SIGTERM, SIGKILL after 5 s) and start it again, as it was."""
        processes.stop([self.process(component)])
        self.start_component(component, timeout=timeout)

    def wait_ready(
        self, component: str, *, since: datetime | None = None, timeout: float = 120.0
    ) -> None:
        """Wait for one component's readiness check; ClusterError with its log tail if it
        exits or the deadline passes. ``since``: when it (re)started (default: now)."""
        proc = self.process(component)
        check = probes.readiness(
            component,
            ports=self.ports,
            api=Api(self.server, self.token, self.ca_file),
            since=since or datetime.now(UTC),
        )

        def ready() -> bool:
            if not processes.alive(proc):
                raise ClusterError(
                    f"{component} exited; end of {proc.log}:\n{self.log_tail(component)}"
                )
            return check is None or check()

        try:
            wait_for(f"{component} to be ready", ready, time.monotonic() + timeout)
        except TimeoutError as err:
            raise ClusterError(f"{err}; end of {proc.log}:\n{self.log_tail(component)}") from None

    def _running(self, component: str) -> Process:
        proc = self.process(component)
        if not processes.alive(proc):
            raise ClusterError(f"{component} is not running; start it with start_component")
        return proc

    # ---- inspection ------------------------------------------------------------------
    @property
    def pod_log(self) -> Path:
        """The file kwok serves as every fake pod's container logs (append to it)."""
        return self.workdir / components.POD_LOG

    def log_path(self, component: str) -> Path:
        return self.workdir / "logs" / f"{component}.log"

    def log_tail(self, component: str, lines: int = 40) -> str:
        """The last lines of one component's log."""
        return processes.tail(self.log_path(component), lines)

    def log_tails(self, lines: int = 25) -> str:
        """The last lines of every component's log, with headers, for failure reports."""
        return "\n".join(
            f"==== {name} ({self.log_path(name)}) ====\n{self.log_tail(name, lines)}"
            for name in (*COMPONENTS, *self.optional_components())
        )

    def optional_components(self) -> list[str]:
        """Started components beyond the five (Kueue's manager), in start order."""
        return [p.name for p in self.processes if p.name == kueue.NAME]

    def status(self) -> dict[str, bool]:
        """Component name -> whether its process is still running."""
        return {proc.name: processes.alive(proc) for proc in self.processes}

    def rss_bytes(self) -> dict[str, int]:
        """Component name -> resident memory in bytes."""
        return {proc.name: processes.rss_bytes(proc) for proc in self.processes}

    def env(self) -> dict[str, str]:
        """Variables for a shell or subprocess: KUBECONFIG and the binary directory."""
        return {"KUBECONFIG": str(self.kubeconfig), "QWENFT_K8S_BIN": str(self.bin_dir)}

    # ---- state -----------------------------------------------------------------------
    def save(self) -> None:
        data: dict[str, Any] = {
            "workdir": str(self.workdir),
            "server": self.server,
            "token": self.token,
            "ca_file": str(self.ca_file),
            "kubeconfig": str(self.kubeconfig),
            "bin_dir": str(self.bin_dir),
            "ports": self.ports,
            "started_seconds": self.started_seconds,
            "processes": [p.to_json() for p in self.processes],
        }
        (self.workdir / STATE_FILE).write_text(json.dumps(data, indent=2) + "\n")

    @classmethod
    def load(cls, workdir: Path) -> ControlPlane:
        data = json.loads((Path(workdir) / STATE_FILE).read_text())
        return cls(
            workdir=Path(data["workdir"]),
            server=data["server"],
            token=data["token"],
            ca_file=Path(data["ca_file"]),
            kubeconfig=Path(data["kubeconfig"]),
            bin_dir=Path(data["bin_dir"]),
            ports=data["ports"],
            started_seconds=data["started_seconds"],
            processes=[Process.from_json(p) for p in data["processes"]],
        )


def _nodes_ready(api: Api, expected: int) -> bool:
    """True when at least `expected` nodes report condition Ready=True."""
    status, body = api.request("GET", "/api/v1/nodes")
    if status != 200:
        return False
    ready = [
        n
        for n in body.get("items", [])
        if any(
            c["type"] == "Ready" and c["status"] == "True"
            for c in n.get("status", {}).get("conditions", [])
        )
    ]
    return len(ready) >= expected
