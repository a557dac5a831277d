"""Where the control-plane binaries are, and which are missing.

hack/build-cluster.sh builds them into ~/.cache/qwenft/k8s/$K8S_VERSION/bin/ from the
versions pinned in hack/versions.env; this module reads the same file so both agree.
"""

from __future__ import annotations

import os
from pathlib import Path

HACK_DIR = Path(__file__).resolve().parent.parent
VERSIONS_FILE = HACK_DIR / "versions.env"
KWOK_DIR = HACK_DIR / "kwok"
REQUIRED = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok")


class BinariesMissingError(RuntimeError):
    """The control plane has not been built on this machine."""


def read_versions(path: Path = VERSIONS_FILE) -> dict[str, str]:
    """Parse the KEY=value lines of hack/versions.env."""
    versions: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, value = line.split("=", 1)
            versions[key.strip()] = value.strip()
    return versions


def bin_dir() -> Path:
    """The binary directory: $QWENFT_K8S_BIN, else the cache dir of the pinned version."""
    if explicit := os.environ.get("QWENFT_K8S_BIN"):
        return Path(explicit)
    cache = Path(os.environ.get("QWENFT_K8S_CACHE", Path.home() / ".cache/qwenft/k8s"))
    return cache / read_versions()["K8S_VERSION"] / "bin"


def require_binaries(directory: Path) -> None:
    """Raise BinariesMissingError naming the build command when a binary is absent."""
    missing = [name for name in REQUIRED if not os.access(directory / name, os.X_OK)]
    if missing:
        raise BinariesMissingError(
            f"control-plane binaries missing from {directory}: {', '.join(missing)}; "
            "build them once with `bash hack/build-cluster.sh` (tens of minutes the first time)"
        )
