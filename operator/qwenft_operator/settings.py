"""Operator settings, read once from the environment at start-up (pydantic-settings).

The Helm chart sets these variables; tests build :class:`OperatorConfig` directly.
Builders take the settings as a value, so nothing reads the environment behind a
caller's back: only :meth:`OperatorConfig.from_env` does, through pydantic-settings.

    QWENFT_NAMESPACES=team-a,team-b qwenft operator
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

ENV_PREFIX = "QWENFT_"
DEFAULT_TRAINER_IMAGE = "ghcr.io/qwenft/trainer:0.1.0"
DEFAULT_VLLM_IMAGE = "vllm/vllm-openai:v0.11.0"
DEFAULT_CURL_IMAGE = "curlimages/curl:8.11.1"
DEFAULT_AWSCLI_IMAGE = "amazon/aws-cli:2.22.35"


class SettingsError(ValueError):
    """An environment variable holds a value the operator can't use."""


class OperatorConfig(BaseModel):
    """How the operator runs; each field is the variable ``QWENFT_<FIELD NAME>``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    namespaces: Annotated[tuple[str, ...], NoDecode] = Field(
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

    @field_validator("namespaces", mode="before")
    @classmethod
    def _comma_list(cls, value: Any) -> Any:
        if isinstance(value, str):
            return tuple(ns.strip() for ns in value.split(",") if ns.strip())
        return value

    @classmethod
    def from_env(cls) -> OperatorConfig:
        """Settings from the ``QWENFT_*`` variables; empty ones keep their default."""
        try:
            found = _FromEnvironment()
        except ValidationError as err:
            problems = "; ".join(
                f"{ENV_PREFIX}{str(e['loc'][0]).upper()}: {e['msg']}" for e in err.errors()
            )
            raise SettingsError(f"invalid operator settings: {problems}") from err
        return cls.model_validate(found.model_dump())


class _FromEnvironment(BaseSettings, OperatorConfig):
    """:class:`OperatorConfig` as pydantic-settings reads it from the environment."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_ignore_empty=True, frozen=True, extra="ignore"
    )
