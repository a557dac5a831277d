"""Stop a control plane when the process that owns it dies without stopping it.

A test session killed with SIGKILL (a CI timeout, an OOM kill) never runs its teardown;
without this, five servers and ~600 MiB would outlive it. `ControlPlane.start(owner_pid=...)`
runs `python3 -m devcluster.watchdog <owner pid> <workdir>` beside the components.

    python3 -m devcluster.watchdog 12345 /tmp/qwenft-cluster-abc   # (started for you)
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from pathlib import Path


def owner_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"


def main(owner: int, workdir: Path) -> None:
    from devcluster.controlplane import ControlPlane

    while owner_alive(owner) and workdir.exists():
        time.sleep(1.0)
    if not workdir.exists():  # stopped normally
        return
    cp = ControlPlane.load(workdir)
    cp.processes = [p for p in cp.processes if p.pid != os.getpid()]
    cp.stop(remove_workdir=False)
    shutil.rmtree(workdir / "etcd", ignore_errors=True)


if __name__ == "__main__":
    main(int(sys.argv[1]), Path(sys.argv[2]))
