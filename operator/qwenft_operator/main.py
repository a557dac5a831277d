"""``qwenft operator``: run the operator against the current cluster.

Settings come from ``QWENFT_*`` environment variables (:mod:`qwenft_operator.settings`):
the namespaces to watch (all when empty), default images, GPU resource name, and the
ports of ``/metrics`` and of the liveness probe (``/healthz``). The Helm chart runs it as

    QWENFT_NAMESPACES=team-a,team-b qwenft operator

and a developer the same way, with ``KUBECONFIG`` pointing at a cluster. Before it
starts watching, it checks that it may list and watch everything it needs
(:mod:`qwenft_operator.permissions`) and exits 2 naming what is refused. An API server that
can't be reached yet (a cluster coming up, an outage) is waited for, one log line per
attempt with a growing pause, so the operator's pod doesn't crash-loop through it.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import time
from collections.abc import Callable

import kopf
import uvloop
from kubernetes.client.rest import ApiException
from kubernetes.config import ConfigException
from urllib3.exceptions import HTTPError

from qwenft_operator import handlers, kube, permissions
from qwenft_operator.settings import OperatorConfig, SettingsError

log = logging.getLogger(__name__)

# Pauses between attempts to reach the API server at start-up: doubling, capped.
STARTUP_RETRY_FIRST_SECONDS = 1.0
STARTUP_RETRY_MAX_SECONDS = 30.0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="qwenft operator",
        description="Run the QwenFineTune operator (settings from QWENFT_* variables).",
    )
    parser.add_argument("--verbose", action="store_true", help="log debug messages")
    return parser


async def run(settings: OperatorConfig, stop_flag: asyncio.Event | None = None) -> None:
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


def is_transient(err: Exception) -> bool:
    """Whether an API call failed for a reason that waiting can cure.

    No connection (refused, reset, timed out: urllib3 and socket errors), an API server
    that is starting or overloaded (5xx, 429), but not an answer about this operator
    (401, 403, 404), which no retry changes.
    """
    if isinstance(err, ApiException):
        return err.status is None or err.status == 429 or err.status >= 500
    return isinstance(err, HTTPError | OSError)


def _check_once(settings: OperatorConfig) -> str | None:
    try:
        clients = kube.Clients.connect()
    except ConfigException:
        return None  # no credentials at all: kopf reports that itself
    try:
        return permissions.report(kube.denied(clients, permissions.required(settings.namespaces)))
    finally:
        clients.close()


def refused_watches(
    settings: OperatorConfig, *, sleep: Callable[[float], None] = time.sleep
) -> str | None:
    """The error to stop with when the operator may not watch what it needs, else None.

    Waits for an API server that can't be reached yet, retrying with a doubling pause
    (capped) and one warning per attempt. None too when the API server answers but the
    check can't be made (SelfSubjectAccessReview refused): kopf then reports what it is
    refused itself.
    """
    pause = STARTUP_RETRY_FIRST_SECONDS
    attempt = 1
    while True:
        try:
            return _check_once(settings)
        except (ApiException, HTTPError, OSError) as err:
            if not is_transient(err):
                log.warning("could not check the operator's permissions before starting: %s", err)
                return None
            log.warning(
                "API server not reachable (attempt %d: %s); retrying in %.0f s",
                attempt,
                _short(err),
                pause,
            )
        sleep(pause)
        pause = min(pause * 2, STARTUP_RETRY_MAX_SECONDS)
        attempt += 1


def _short(err: Exception) -> str:
    """One line for the log: the innermost reason of a urllib3 retry chain."""
    reason = getattr(err, "reason", None) or err
    if isinstance(err, ApiException):
        return f"HTTP {err.status} {err.reason}"
    return str(reason).splitlines()[0][:200]


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
        settings = OperatorConfig.from_env()
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
