"""The operator's start-up through an API outage (no cluster: nothing listens on the port).

Covers: which API failures count as transient; a permission check against an API server
that refuses connections is retried with doubling, capped pauses and one warning per
attempt, instead of ending the process with a traceback.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import yaml
from kubernetes.client.rest import ApiException
from kubernetes.config import kube_config
from qwenft_operator import main
from qwenft_operator.settings import OperatorConfig
from support import free_port
from urllib3.exceptions import MaxRetryError, NewConnectionError


class _Enough(Exception):
    """Raised by the test's sleep to end the retry loop."""


def _kubeconfig(path: Path, port: int) -> Path:
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "c", "cluster": {"server": f"http://127.0.0.1:{port}"}}],
        "users": [{"name": "u", "user": {"token": "t"}}],
        "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
        "current-context": "x",
    }
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.parametrize(
    ("err", "transient"),
    [
        (ApiException(status=503, reason="Service Unavailable"), True),
        (ApiException(status=500, reason="Internal Server Error"), True),
        (ApiException(status=429, reason="Too Many Requests"), True),
        (ApiException(status=403, reason="Forbidden"), False),
        (ApiException(status=401, reason="Unauthorized"), False),
        (ApiException(status=404, reason="Not Found"), False),
        (MaxRetryError(None, "/apis", NewConnectionError(None, "refused")), True),  # type: ignore[arg-type]
        (ConnectionRefusedError(111, "Connection refused"), True),
    ],
)
def test_transient_failures_are_told_from_answers(err: Exception, transient: bool) -> None:
    assert main.is_transient(err) is transient


def test_unreachable_api_server_is_retried_with_growing_capped_pauses(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    # The client reads $KUBECONFIG when it is imported, so the default location is set too.
    kubeconfig = str(_kubeconfig(tmp_path / "kubeconfig", free_port()))
    monkeypatch.setenv("KUBECONFIG", kubeconfig)
    monkeypatch.setattr(kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", kubeconfig)
    pauses: list[float] = []

    def sleep(seconds: float) -> None:
        pauses.append(seconds)
        if len(pauses) == 7:
            raise _Enough

    caplog.set_level(logging.WARNING, logger=main.__name__)
    with pytest.raises(_Enough):
        main.refused_watches(OperatorConfig(namespaces=["team-a"]), sleep=sleep)
    assert pauses == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]
    lines = [r.getMessage() for r in caplog.records if "not reachable" in r.getMessage()]
    assert len(lines) == 7
    assert lines[0].startswith("API server not reachable (attempt 1: ")
    assert "retrying in 1 s" in lines[0] and "attempt 7" in lines[6]
    assert all("\n" not in line for line in lines)
