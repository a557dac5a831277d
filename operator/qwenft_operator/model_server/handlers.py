"""kopf registrations of ``QwenModelServer``: which events wake which server.

A server is reconciled on its own watch events, on its Deployment's (found by the
``finetune.qwenft.io/server`` label), and on every ``QwenFineTune`` event of its namespace
(:meth:`ServerController.fine_tune_changed`). The runs are kept in a kopf index
(``qwenft_fine_tunes``, by namespace), so a server's reconcile lists nothing. Like the run
handlers, these are level-based ``kopf.on.event`` handlers, registered on a registry
passed in.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import kopf

from qwenft_operator import kube, labels
from qwenft_operator.kopf_typing import typed
from qwenft_operator.model_server.builders import SERVER_KEY
from qwenft_operator.model_server.controller import ServerController
from qwenft_operator.model_server.fine_tune_index import record_fine_tune
from qwenft_operator.model_server.spec import PLURAL
from qwenft_operator.settings import OperatorConfig
from qwenft_operator.spec import GROUP, VERSION
from qwenft_operator.spec import PLURAL as FINE_TUNES

SERVER_DEPLOYMENTS = {labels.MANAGED_BY_KEY: labels.MANAGED_BY, SERVER_KEY: kopf.PRESENT}
WORKERS = 4


def _controller(memo: kopf.Memo, kwargs: dict[str, Any]) -> ServerController:
    controller: ServerController = memo["servers"]
    controller.fine_tunes = kwargs["qwenft_fine_tunes"]
    return controller


def register(registry: kopf.OperatorRegistry, settings: OperatorConfig) -> None:
    """Register the server handlers on ``registry``."""
    servers = {"group": GROUP, "version": VERSION, "plural": PLURAL, "registry": registry}
    fine_tunes = {"group": GROUP, "version": VERSION, "plural": FINE_TUNES, "registry": registry}

    @typed(kopf.on.startup(registry=registry))
    async def start_servers(memo: kopf.Memo, **_: Any) -> None:
        executor = ThreadPoolExecutor(max_workers=WORKERS, thread_name_prefix="qwenft-qms")
        memo["servers"] = ServerController(kube.Clients.connect(), settings, executor)

    @typed(kopf.on.cleanup(registry=registry))
    async def stop_servers(memo: kopf.Memo, **_: Any) -> None:
        if "servers" in memo:
            controller: ServerController = memo["servers"]
            controller.executor.shutdown(wait=False, cancel_futures=True)
            controller.clients.close()

    @typed(kopf.index(id="qwenft_fine_tunes", **fine_tunes))
    def qwenft_fine_tunes(namespace: str, body: kopf.Body, **_: Any) -> Any:
        return {namespace: record_fine_tune(body)}

    @typed(kopf.on.event(id="servers", **fine_tunes))
    async def fine_tune_changed(
        type: str | None, namespace: str, name: str, body: kopf.Body, memo: kopf.Memo,
        **kwargs: Any,
    ) -> None:  # fmt: skip
        controller = _controller(memo, kwargs)
        if not controller.servers_in(namespace):
            return  # no server here to tell (most namespaces)
        record = None if type == "DELETED" else record_fine_tune(body)
        await controller.fine_tune_changed(namespace, name, record)

    @typed(kopf.on.event(**servers))
    async def server_changed(
        type: str | None, namespace: str, name: str, body: kopf.Body, memo: kopf.Memo,
        **kwargs: Any,
    ) -> None:  # fmt: skip
        controller = _controller(memo, kwargs)
        if type == "DELETED":
            controller.forget((namespace, name))
            return
        await controller.server_changed((namespace, name), body)

    @typed(kopf.on.event("apps", "v1", "deployments", labels=SERVER_DEPLOYMENTS, registry=registry))
    async def server_deployment_changed(
        namespace: str, labels: kopf.Labels, memo: kopf.Memo, **kwargs: Any
    ) -> None:
        await _controller(memo, kwargs).trigger((namespace, labels[SERVER_KEY]))
