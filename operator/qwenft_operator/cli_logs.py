"""``qwenft logs RUN [-f] [--rank N]``: the logs of a run's pods, from the current kube context.

The run's pods are found by the labels every child's pods carry (:mod:`labels`: the run's
name and the component, ``validate|train|merge|serve``); a training pod's node rank is its
Job completion index (the annotation the Job controller sets and torchrun's
``--node-rank`` reads). Without ``--job`` the component is the one the run's phase is in
(Training: train, Ready: serve, ...); a run that has ended shows the last step that made
pods. Of several pods for one rank (a retried or restarted Job, a rolling Deployment) the
newest is shown. :func:`select_pod` and :func:`component_for` are pure; the API calls are
a pod list and ``read_namespaced_pod_log`` (``follow=True`` with ``-f``), streamed as it
arrives.
"""

from __future__ import annotations

import argparse
import codecs
import json
import sys
from collections.abc import Iterable, Mapping, Sequence
from typing import IO, Any

from kubernetes import client
from kubernetes.client.rest import ApiException
from kubernetes.config import ConfigException

from qwenft_operator import kube, labels
from qwenft_operator.labels import COMPONENTS, Component
from qwenft_operator.phases import Phase

EXIT_NO_POD = 1

EXAMPLES = """\
examples:
  qwenft logs support-lora                    # the pods of the step the run is in
  qwenft logs qlora-72b -n ml -f --rank 1     # follow training node rank 1
  qwenft logs support-lora --job validate     # the dataset validator's report
  qwenft logs support-lora --job serve --tail 50
"""

# The step whose pods a phase's logs come from.
PHASE_COMPONENT: dict[Phase, Component] = {
    Phase.VALIDATING: "validate",
    Phase.TRAINING: "train",
    Phase.SUSPENDED: "train",
    Phase.MERGING: "merge",
    Phase.DEPLOYING: "serve",
    Phase.READY: "serve",
}


def component_of(pod: Mapping[str, Any]) -> str:
    return str(((pod.get("metadata") or {}).get("labels") or {}).get(labels.COMPONENT_KEY, ""))


def rank_of(pod: Mapping[str, Any]) -> int | None:
    """A training pod's node rank: its Job completion index; None when it has none."""
    annotations = (pod.get("metadata") or {}).get("annotations") or {}
    index = annotations.get(labels.JOB_COMPLETION_INDEX_ANNOTATION)
    return int(index) if isinstance(index, str) and index.isdigit() else None


def phase_of(run: Mapping[str, Any]) -> Phase | None:
    """The run's status.phase; None before the operator wrote one (or one it doesn't know)."""
    raw = (run.get("status") or {}).get("phase")
    return next((p for p in Phase if p.value == raw), None)


def component_for(phase: Phase | None, pods: Sequence[Mapping[str, Any]]) -> Component:
    """The step to show: the phase's; else the last step (in run order) that has pods."""
    if phase is not None and phase in PHASE_COMPONENT:
        return PHASE_COMPONENT[phase]
    present = {component_of(p) for p in pods}
    for component in reversed(COMPONENTS):
        if component in present:
            return component
    return "validate"


def select_pod(
    pods: Iterable[Mapping[str, Any]], component: str, rank: int | None
) -> Mapping[str, Any] | None:
    """The newest pod of ``component`` (of node rank ``rank`` for training; rank 0 if None)."""
    wanted = [p for p in pods if component_of(p) == component]
    if component == "train":
        wanted = [p for p in wanted if rank_of(p) == (rank or 0)]
    if not wanted:
        return None
    return max(wanted, key=lambda p: str((p.get("metadata") or {}).get("creationTimestamp", "")))


def no_pod_message(run: str, phase: Phase | None, component: str, rank: int | None) -> str:
    what = f"{component} pod" + (f" of rank {rank or 0}" if component == "train" else "")
    return f"run '{run}' is {phase or 'Pending'}: no {what} exists yet"


def default_container(pod: Mapping[str, Any]) -> str:
    """The pod's first (main) container: the step's own program, not an init container."""
    containers = (pod.get("spec") or {}).get("containers") or [{}]
    return str(containers[0].get("name", ""))


def copy_stream(chunks: Iterable[bytes], out: IO[str]) -> None:
    """Write log bytes to ``out`` as they arrive (a UTF-8 character may span two chunks)."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    for chunk in chunks:
        out.write(decoder.decode(chunk))
        out.flush()
    out.write(decoder.decode(b"", final=True))
    out.flush()


def api_message(err: ApiException) -> str:
    """The API server's own message (``container "train" ... is waiting to start``)."""
    try:
        body = json.loads(err.body or "")
    except (TypeError, ValueError):
        body = None
    if isinstance(body, dict) and body.get("message"):
        return str(body["message"])
    return f"{err.status} {err.reason}"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="qwenft logs",
        description="Print (or follow) the logs of a QwenFineTune's pods, from the current "
        "kube context.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("run", help="name of the QwenFineTune")
    parser.add_argument("-n", "--namespace", default="default", help="its namespace")
    parser.add_argument("-f", "--follow", action="store_true", help="stream new lines")
    parser.add_argument(
        "--job",
        choices=COMPONENTS,
        help="which step's pods (default: the step the run's phase is in)",
    )
    parser.add_argument(
        "--rank", type=int, help="training node rank (Job completion index; default 0)"
    )
    parser.add_argument("-c", "--container", help="container (default: the pod's main one)")
    parser.add_argument("--tail", type=int, help="only the last N lines")
    parser.add_argument(
        "-p", "--previous", action="store_true", help="the previous (restarted) container"
    )
    parser.add_argument("--kubeconfig", help="kubeconfig file (default: $KUBECONFIG)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.rank is not None and args.job not in (None, "train"):
        print("qwenft logs: --rank is for training pods (--job train)", file=sys.stderr)
        return 2
    try:
        clients = kube.Clients.connect(args.kubeconfig)
    except ConfigException as err:
        print(f"qwenft logs: no cluster to talk to: {err}", file=sys.stderr)
        return EXIT_NO_POD
    try:
        return _show(clients, args)
    except ApiException as err:
        print(f"qwenft logs: {api_message(err)}", file=sys.stderr)
        return EXIT_NO_POD
    except KeyboardInterrupt:
        return 130
    finally:
        clients.close()


def _show(clients: kube.Clients, args: argparse.Namespace) -> int:
    run = kube.get_run(clients, args.namespace, args.run)
    if run is None:
        print(
            f"qwenft logs: no QwenFineTune '{args.run}' in namespace '{args.namespace}'",
            file=sys.stderr,
        )
        return EXIT_NO_POD
    phase = phase_of(run)
    selector = labels.selector_string({labels.NAME_KEY: args.run})
    pods = kube.list_children(clients, "Pod", args.namespace, selector)
    component = args.job or ("train" if args.rank is not None else component_for(phase, pods))
    pod = select_pod(pods, component, args.rank)
    if pod is None:
        print(
            f"qwenft logs: {no_pod_message(args.run, phase, component, args.rank)}", file=sys.stderr
        )
        return EXIT_NO_POD
    name = str(pod["metadata"]["name"])
    container = args.container or default_container(pod)
    print(f"==> pod {name}, container {container}", file=sys.stderr)
    core = client.CoreV1Api(clients.api)
    response = core.read_namespaced_pod_log(
        name,
        args.namespace,
        container=container,
        follow=args.follow,
        tail_lines=args.tail,
        previous=args.previous,
        _preload_content=False,
    )
    try:
        copy_stream(response.stream(amt=4096, decode_content=True), sys.stdout)
    finally:
        response.release_conn()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
