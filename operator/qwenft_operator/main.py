"""``qwenft operator``: run the operator against the current cluster.

Settings come from ``QWENFT_*`` environment variables (:mod:`qwenft_operator.settings`):
the namespaces to watch (all when empty), default images, GPU resource name, and the
ports of ``/metrics`` and of the liveness probe (``/healthz``). The Helm chart runs it as

    QWENFT_NAMESPACES=team-a,team-b qwenft operator

and a developer the same way, with ``KUBECONFIG`` pointing at a cluster. Before it
starts watching, it checks that it may list and watch everything it needs
(:mod:`qwenft_operator.permissions`) and exits 2 naming what is refused.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

import kopf
import uvloop
from kubernetes.client.rest import ApiException
from kubernetes.config import ConfigException

from qwenft_operator import handlers, kube, permissions
from qwenft_operator.settings import OperatorSettings, SettingsError

log = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="qwenft operator",
        description="Run the QwenFineTune operator (settings from QWENFT_* variables).",
    )
    parser.add_argument("--verbose", action="store_true", help="log debug messages")
    return parser


async def run(settings: OperatorSettings, stop_flag: asyncio.Event | None = None) -> None:
    """Run the operator until ``stop_flag`` is set (or the process is signalled)."""
    registry = kopf.OperatorRegistry()
    handlers.register(registry, settings)
    scope: dict[str, object] = (
        {"clusterwide": True} if settings.cluster_wide else {"namespaces": settings.namespaces}
    )
    await kopf.operator(
        registry=registry,
        standalone=True,
        liveness_endpoint=f"http://0.0.0.0:{settings.health_port}/healthz",
        memo=kopf.Memo(settings=settings),
        stop_flag=stop_flag,
        **scope,
    )


def refused_watches(settings: OperatorSettings) -> str | None:
    """The error to stop with when the operator may not watch what it needs, else None.

    None too when the check itself can't be made: kopf then reports that connection or
    login problem itself, and retries it.
    """
    try:
        clients = kube.Clients.connect()
    except ConfigException:
        return None
    try:
        return permissions.report(kube.denied(clients, permissions.required(settings.namespaces)))
    except (ApiException, OSError) as err:
        log.warning("could not check the operator's permissions before starting: %s", err)
        return None
    finally:
        clients.close()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if not args.verbose:
        # kopf logs every handler success; keep the operator's log to changes and problems.
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    try:
        settings = OperatorSettings.from_env()
    except SettingsError as err:
        print(f"qwenft operator: {err}", file=sys.stderr)
        return 2
    problem = refused_watches(settings)
    if problem is not None:
        print(f"qwenft operator: {problem}", file=sys.stderr)
        return 2
    # uvloop's event loop (as `kopf run` picks when installed): a quarter less operator CPU
    # with hundreds of runs starting at once (bench/bench_operator.py).
    uvloop.run(run(settings))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
