"""Events on a run: the core/v1 body, and a refused post that is logged, never raised.

A namespace being deleted refuses every new object with a 403 whose cause is
``NamespaceTerminating``: the run's last Events are dropped at debug level, while any other
refusal is a warning.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any

import pytest
from kubernetes.client.rest import ApiException
from qwenft_operator import kube
from qwenft_operator.actions import EmitEvent
from qwenft_operator.events import MAX_MESSAGE, build_event

RUN = {
    "apiVersion": "finetune.qwenft.io/v1alpha1",
    "kind": "QwenFineTune",
    "metadata": {"name": "support-lora", "namespace": "team-a", "uid": "u-1"},
}
NOW = datetime(2026, 12, 2, 1, 2, 3, tzinfo=UTC)


def test_event_names_the_run_and_its_reason() -> None:
    body = build_event(RUN, EmitEvent("Warning", "MissingReference", "no dataset"), NOW)
    assert body["metadata"] == {"generateName": "support-lora.", "namespace": "team-a"}
    assert body["involvedObject"] == {
        "apiVersion": "finetune.qwenft.io/v1alpha1",
        "kind": "QwenFineTune",
        "name": "support-lora",
        "namespace": "team-a",
        "uid": "u-1",
    }
    assert (body["type"], body["reason"], body["message"]) == (
        "Warning",
        "MissingReference",
        "no dataset",
    )
    assert body["firstTimestamp"] == body["lastTimestamp"] == "2026-12-02T01:02:03Z"


def test_long_messages_are_cut_to_the_api_limit() -> None:
    body = build_event(RUN, EmitEvent("Normal", "Training", "x" * 5000), NOW)
    assert len(body["message"]) == MAX_MESSAGE
    assert body["message"].endswith("...")


class Refusing:
    """Clients whose every request is answered with ``status`` and ``body``."""

    def __init__(self, status: int, body: dict[str, Any]) -> None:
        self.error = ApiException(status=status, reason="Forbidden")
        self.error.body = json.dumps(body)
        self.posted: list[str] = []

    def request(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        self.posted.append(f"{method} {path}")
        raise self.error


TERMINATING = {
    "kind": "Status",
    "reason": "Forbidden",
    "details": {"causes": [{"reason": "NamespaceTerminating"}]},
}


@pytest.mark.parametrize(
    ("status", "body", "level"),
    [(403, TERMINATING, logging.DEBUG), (403, {"reason": "Forbidden"}, logging.WARNING)],
)
def test_a_refused_event_is_logged_not_raised(
    status: int, body: dict[str, Any], level: int, caplog: pytest.LogCaptureFixture
) -> None:
    clients = Refusing(status, body)
    with caplog.at_level(logging.DEBUG, logger="qwenft_operator.kube"):
        kube.post_event(clients, RUN, EmitEvent("Normal", "Training", "started"))  # type: ignore[arg-type]
    assert clients.posted == ["POST /api/v1/namespaces/team-a/events"]
    (record,) = [r for r in caplog.records if "Training" in r.getMessage()]
    assert record.levelno == level
