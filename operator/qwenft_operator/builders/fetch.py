"""The init container that downloads a URL dataset into the pod before the trainer starts.

http(s) URLs are fetched with curl, s3:// URLs with the AWS CLI (which also speaks to
S3-compatible stores through ``endpoint``). Credentials come from the run's Secret as
environment variables; Kubernetes expands ``$(VAR)`` in the arguments, so no shell runs.
"""

from __future__ import annotations

from typing import Any

from qwenft_operator.builders import paths, pods
from qwenft_operator.parsed_run import Run
from qwenft_operator.sources import UrlSource

TOKEN_KEY = "token"  # key of the bearer token in an http(s) credentials Secret
_TOKEN_ENV = "DATASET_TOKEN"


def build_fetch_container(run: Run) -> dict[str, Any] | None:
    """The download init container, or None when the dataset is not a URL."""
    source = run.spec.dataset.url
    if source is None:
        return None
    target = paths.dataset_file(run)
    if source.url.startswith("s3://"):
        image = run.settings.awscli_image
        command, env, env_from = _s3(source, target)
    else:
        image = run.settings.curl_image
        command, env, env_from = _http(source, target)
    container: dict[str, Any] = {
        "name": "fetch-dataset",
        "image": image,
        **pods.image_pull_policy(run),
        "command": command,
        "env": [{"name": "HOME", "value": paths.TMP_DIR}, *env],
        "volumeMounts": [
            {"name": "tmp", "mountPath": paths.TMP_DIR},
            {"name": "data", "mountPath": paths.DATA_DIR},
        ],
        "securityContext": pods.container_security_context(),
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    if env_from:
        container["envFrom"] = env_from
    return container


Parts = tuple[list[str], list[dict[str, Any]], list[dict[str, Any]]]


def _http(source: UrlSource, target: str) -> Parts:
    command = ["curl", "--fail", "--silent", "--show-error", "--location", "--retry", "5"]
    env: list[dict[str, Any]] = []
    if source.credentials_secret:
        ref = {"name": source.credentials_secret, "key": TOKEN_KEY}
        env.append({"name": _TOKEN_ENV, "valueFrom": {"secretKeyRef": ref}})
        command += ["--header", f"Authorization: Bearer $({_TOKEN_ENV})"]
    return [*command, "--output", target, source.url], env, []


def _s3(source: UrlSource, target: str) -> Parts:
    command = ["aws", "s3", "cp", "--only-show-errors"]
    if source.endpoint:
        command += ["--endpoint-url", source.endpoint]
    env_from = []
    if source.credentials_secret:
        env_from.append({"secretRef": {"name": source.credentials_secret}})
    return [*command, source.url, target], [], env_from
