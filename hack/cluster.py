#!/usr/bin/env python3
"""Start, inspect and stop the local control plane (etcd, kube-apiserver, controllers, kwok).

    bash hack/build-cluster.sh          # once per machine: build the binaries
    eval "$(python3 hack/cluster.py up)"  # start; exports KUBECONFIG and PATH
    python3 hack/cluster.py up --with kueue   # ...with Kueue's manager and a GPU queue
    kubectl get nodes
    python3 hack/cluster.py status      # components, PIDs, ports, memory
    python3 hack/cluster.py env         # the export lines again
    python3 hack/cluster.py down        # stop exactly what `up` started, remove its temp dir

One component at a time, for reproducing outages by hand (each waits, with --timeout, until
the component is ready again: etcd /health, API server /readyz, controllers' /healthz, kwok
holding every node Lease, which takes up to 40 s):

    python3 hack/cluster.py restart kube-apiserver   # SIGTERM (SIGKILL after 5 s), start again
    python3 hack/cluster.py kill kube-apiserver      # SIGKILL, as a crash; ...
    python3 hack/cluster.py start kube-apiserver     # ... then start it with the same flags
    python3 hack/cluster.py pause etcd               # SIGSTOP: it holds its port, answers nothing
    python3 hack/cluster.py resume etcd              # SIGCONT

`up` records its work dir in ~/.cache/qwenft/devcluster/current (or $QWENFT_CLUSTER_STATE),
so the other subcommands work from any shell. Only one cluster per state file.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from devcluster import ClusterError, ControlPlane, kueue, processes
from devcluster.binaries import BinariesMissingError
from devcluster.controlplane import COMPONENTS

POINTER = Path(
    os.environ.get("QWENFT_CLUSTER_STATE", Path.home() / ".cache/qwenft/devcluster/current")
)


def current() -> ControlPlane | None:
    """The cluster `up` started last, if its state is still on disk."""
    try:
        return ControlPlane.load(Path(POINTER.read_text().strip()))
    except FileNotFoundError:
        return None


def export_lines(cp: ControlPlane) -> str:
    path = f"{cp.bin_dir}:{os.environ.get('PATH', '')}"
    return "\n".join(
        [f"export KUBECONFIG={shlex.quote(str(cp.kubeconfig))}", f"export PATH={shlex.quote(path)}"]
    )


def cmd_up(args: argparse.Namespace) -> int:
    running = current()
    if running and all(running.status().values()):
        print(f"already running (workdir {running.workdir})", file=sys.stderr)
        if "kueue" in args.components and kueue.NAME not in running.optional_components():
            try:
                kueue.start(running, say=lambda msg: print(msg, file=sys.stderr))
            except (ClusterError, BinariesMissingError) as err:
                print(f"error: {err}", file=sys.stderr)
                return 1
            kueue.create_default_queues(running)
        print(export_lines(running))
        return 0
    if running:
        running.stop()
    try:
        cp = ControlPlane.start(
            args.workdir,
            gpu_nodes=args.gpu_nodes,
            timeout=args.timeout,
            with_kueue="kueue" in args.components,
        )
        if "kueue" in args.components:
            kueue.create_default_queues(cp)
    except (ClusterError, BinariesMissingError, TimeoutError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    POINTER.parent.mkdir(parents=True, exist_ok=True)
    POINTER.write_text(f"{cp.workdir}\n")
    print(export_lines(cp))
    return 0


def cmd_down(_: argparse.Namespace) -> int:
    cp = current()
    if cp is None:
        print("no cluster recorded", file=sys.stderr)
        return 0
    cp.stop()
    POINTER.unlink(missing_ok=True)
    print(f"stopped; removed {cp.workdir}", file=sys.stderr)
    return 0


def cmd_env(_: argparse.Namespace) -> int:
    cp = current()
    if cp is None:
        print("no cluster recorded; run `hack/cluster.py up`", file=sys.stderr)
        return 1
    print(export_lines(cp))
    return 0


def cmd_status(_: argparse.Namespace) -> int:
    cp = current()
    if cp is None:
        print("no cluster recorded")
        return 1
    rss = cp.rss_bytes()
    print(f"workdir {cp.workdir}\nserver  {cp.server}\nstarted in {cp.started_seconds:.1f}s")
    for proc, (name, up) in zip(cp.processes, cp.status().items(), strict=True):
        state = ("PAUSED" if processes.paused(proc) else "running") if up else "STOPPED"
        print(
            f"{name:24} pid {proc.pid:>7}  {state:8} rss {rss[name] / 2**20:7.1f} MiB"
            f"  log {proc.log}"
        )
    print(f"{'total':24} {'':21} rss {sum(rss.values()) / 2**20:7.1f} MiB")
    return 0 if all(cp.status().values()) else 1


def cmd_component(args: argparse.Namespace) -> int:
    """restart, kill, start, pause or resume one component of the recorded cluster."""
    cp = current()
    if cp is None:
        print("no cluster recorded; run `hack/cluster.py up`", file=sys.stderr)
        return 1
    name = args.component
    try:
        if args.command == "restart":
            cp.restart(name, timeout=args.timeout)
        elif args.command == "kill":
            cp.kill(name)
        elif args.command == "start":
            cp.start_component(name, timeout=args.timeout)
        elif args.command == "pause":
            cp.pause(name)
        else:
            cp.resume(name, timeout=args.timeout)
    except (ClusterError, TimeoutError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"{name}: {args.command} done (pid {cp.process(name).pid})", file=sys.stderr)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="start the control plane and print export lines")
    up.add_argument("--workdir", type=Path, help="default: a new temp dir")
    up.add_argument("--gpu-nodes", type=int, default=4)
    up.add_argument("--timeout", type=float, default=180.0, help="seconds to become ready")
    up.add_argument(
        "--with",
        dest="components",
        action="append",
        default=[],
        choices=["kueue"],
        help="an optional component: kueue (its manager, CRDs and webhooks, a ResourceFlavor, "
        "ClusterQueue `cluster-queue` with 8 GPUs and LocalQueue `team-a` in default)",
    )
    up.set_defaults(func=cmd_up)
    for name, func in (("down", cmd_down), ("env", cmd_env), ("status", cmd_status)):
        sub.add_parser(name).set_defaults(func=func)
    for name, what in (
        ("restart", "stop one component and start it again with the same flags"),
        ("kill", "SIGKILL one component"),
        ("start", "start a killed component again with the same flags"),
        ("pause", "SIGSTOP one component"),
        ("resume", "SIGCONT a paused component"),
    ):
        one = sub.add_parser(name, help=what)
        # the known components, and any other recorded in state.json (checked when loaded)
        one.add_argument("component", help=f"e.g. {', '.join(COMPONENTS)}")
        one.add_argument("--timeout", type=float, default=120.0, help="seconds to be ready")
        one.set_defaults(func=cmd_component)
    args = parser.parse_args()
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
