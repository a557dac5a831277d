"""Operator settings from QWENFT_* environment variables.

Covers: defaults (those of the chart's values and the image); every variable parsed
(namespace list with blanks, ports, interval); empty values fall back to defaults; bad
values raise SettingsError naming the variable.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
import yaml
from qwenft_operator.settings import OperatorConfig, SettingsError

ROOT = Path(__file__).parents[2]


@pytest.fixture(autouse=True)
def no_qwenft_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in [n for n in os.environ if n.startswith("QWENFT_")]:
        monkeypatch.delenv(name)


def set_env(monkeypatch: pytest.MonkeyPatch, values: dict[str, str]) -> None:
    for name, value in values.items():
        monkeypatch.setenv(name, value)


def test_defaults_are_what_the_chart_and_the_image_set() -> None:
    """Run without the chart (qwenft operator, the bare image), the operator behaves as the
    chart's default values make it: same images, ports and GPU resource, cluster-wide."""
    settings = OperatorConfig.from_env()
    values = yaml.safe_load((ROOT / "charts/qwenft-operator/values.yaml").read_text())["operator"]
    assert settings.namespaces == tuple(values["watchNamespaces"]) and settings.cluster_wide
    assert (settings.trainer_image, settings.vllm_image) == (
        values["trainerImage"],
        values["vllmImage"],
    )
    assert (settings.curl_image, settings.awscli_image) == (
        values["curlImage"],
        values["awscliImage"],
    )
    assert settings.gpu_resource == values["gpuResource"]
    assert (settings.metrics_port, settings.health_port) == (
        values["metricsPort"],
        values["healthPort"],
    )
    image_env = (ROOT / "Dockerfile.operator").read_text()
    assert f"QWENFT_METRICS_PORT={settings.metrics_port}" in image_env
    assert f"QWENFT_HEALTH_PORT={settings.health_port}" in image_env
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert settings.trainer_image.endswith(f":{version}"), "the trainer image of this release"


def test_every_variable_is_read(monkeypatch: pytest.MonkeyPatch) -> None:
    set_env(
        monkeypatch,
        {
            "QWENFT_NAMESPACES": " team-a, ,team-b ",
            "QWENFT_TRAINER_IMAGE": "registry.local/trainer:1",
            "QWENFT_VLLM_IMAGE": "registry.local/vllm:2",
            "QWENFT_GPU_RESOURCE": "amd.com/gpu",
            "QWENFT_METRICS_PORT": "9090",
            "QWENFT_HEALTH_PORT": "9091",
            "QWENFT_PROGRESS_INTERVAL": "2.5",
            "QWENFT_TRAINER_IMAGEX": "ignored",
            "QWENFT_CURL_IMAGE": "",
        },
    )
    settings = OperatorConfig.from_env()
    assert settings.namespaces == ("team-a", "team-b")
    assert not settings.cluster_wide
    assert settings.trainer_image == "registry.local/trainer:1"
    assert settings.vllm_image == "registry.local/vllm:2"
    assert settings.gpu_resource == "amd.com/gpu"
    assert (settings.metrics_port, settings.health_port) == (9090, 9091)
    assert settings.progress_interval == 2.5
    assert settings.curl_image == OperatorConfig().curl_image


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("QWENFT_METRICS_PORT", "http"),
        ("QWENFT_HEALTH_PORT", "70000"),
        ("QWENFT_PROGRESS_INTERVAL", "0"),
    ],
)
def test_bad_values_name_the_variable(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError, match=name):
        OperatorConfig.from_env()
