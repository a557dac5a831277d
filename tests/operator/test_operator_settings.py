"""Operator settings from QWENFT_* environment variables.

Covers: defaults; every variable parsed (namespace list with blanks, ports, interval);
empty values fall back to defaults; bad values raise SettingsError naming the variable.
"""

from __future__ import annotations

import pytest
from qwenft_operator.settings import OperatorSettings, SettingsError


def test_defaults() -> None:
    settings = OperatorSettings.from_env({})
    assert settings.namespaces == ()
    assert settings.cluster_wide
    assert settings.trainer_image == "ghcr.io/qwenft/trainer:0.1.0"
    assert settings.vllm_image.startswith("vllm/vllm-openai:v")
    assert settings.gpu_resource == "nvidia.com/gpu"
    assert (settings.metrics_port, settings.health_port) == (8080, 8081)
    assert settings.progress_interval == 10.0


def test_every_variable_is_read() -> None:
    settings = OperatorSettings.from_env(
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
        }
    )
    assert settings.namespaces == ("team-a", "team-b")
    assert not settings.cluster_wide
    assert settings.trainer_image == "registry.local/trainer:1"
    assert settings.vllm_image == "registry.local/vllm:2"
    assert settings.gpu_resource == "amd.com/gpu"
    assert (settings.metrics_port, settings.health_port) == (9090, 9091)
    assert settings.progress_interval == 2.5
    assert settings.curl_image == OperatorSettings().curl_image


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("QWENFT_METRICS_PORT", "http"),
        ("QWENFT_HEALTH_PORT", "70000"),
        ("QWENFT_PROGRESS_INTERVAL", "0"),
    ],
)
def test_bad_values_name_the_variable(name: str, value: str) -> None:
    with pytest.raises(SettingsError, match=name):
        OperatorSettings.from_env({name: value})
