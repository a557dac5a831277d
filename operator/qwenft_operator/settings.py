"""Operator settings, read once from the environment at start-up.

The Helm chart sets these variables; tests build :class:`OperatorSettings` directly.
Builders take the settings as a value, so nothing reads the environment behind a
caller's back.

    QWENFT_NAMESPACES=team-a,team-b qwenft operator
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from pydantic import BaseModel, ConfigDict, Field, ValidationError

ENV_PREFIX = "QWENFT_"
DEFAULT_TRAINER_IMAGE = "ghcr.io/qwenft/trainer:0.1.0"
DEFAULT_VLLM_IMAGE = "vllm/vllm-openai:v0.11.0"
DEFAULT_CURL_IMAGE = "curlimages/curl:8.11.1"
DEFAULT_AWSCLI_IMAGE = "amazon/aws-cli:2.22.35"


class SettingsError(ValueError):
    """An environment variable holds a value the operator can't use."""


class OperatorSettings(BaseModel):
    """How the operator runs; each field is the variable ``QWENFT_<FIELD NAME>``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    namespaces: tuple[str, ...] = Field(
        default=(), description="Namespaces to watch (comma list); empty watches all."
    )
    trainer_image: str = Field(
        default=DEFAULT_TRAINER_IMAGE, min_length=1, description="Default trainer image."
    )
    vllm_image: str = Field(
        default=DEFAULT_VLLM_IMAGE, min_length=1, description="Default vLLM server image."
    )
    curl_image: str = Field(
        default=DEFAULT_CURL_IMAGE, min_length=1, description="Image fetching http(s) datasets."
    )
    awscli_image: str = Field(
        default=DEFAULT_AWSCLI_IMAGE, min_length=1, description="Image fetching s3 datasets."
    )
    gpu_resource: str = Field(
        default="nvidia.com/gpu", min_length=1, description="Default GPU resource name."
    )
    metrics_port: int = Field(default=8080, ge=1, le=65535, description="Operator /metrics.")
    health_port: int = Field(default=8081, ge=1, le=65535, description="Liveness probe port.")
    progress_interval: float = Field(
        default=10.0, gt=0, description="Seconds between reads of training progress."
    )

    @property
    def cluster_wide(self) -> bool:
        return not self.namespaces

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> OperatorSettings:
        """Settings from ``QWENFT_*`` variables (``os.environ`` by default)."""
        env = os.environ if environ is None else environ
        raw: dict[str, object] = {}
        for name in cls.model_fields:
            value = env.get(ENV_PREFIX + name.upper())
            if value is None or value == "":
                continue
            if name == "namespaces":
                raw[name] = tuple(ns.strip() for ns in value.split(",") if ns.strip())
            else:
                raw[name] = value
        try:
            return cls.model_validate(raw)
        except ValidationError as err:
            problems = "; ".join(
                f"{ENV_PREFIX}{str(e['loc'][0]).upper()}: {e['msg']}" for e in err.errors()
            )
            raise SettingsError(f"invalid operator settings: {problems}") from err
