"""Checks of the base model's ``config.json``, run before any weight loads or any GPU is taken.

A base that can't be trained as asked (a Qwen1 checkpoint, a GPTQ base with ``method: lora``,
a merge into packed weights) would otherwise fail minutes into a GPU job with a library
traceback. Its ``config.json`` says enough, and reading it is cheap: one small file, read
raw with transformers' own hub plumbing (``PreTrainedConfig.get_config_dict``: local
directories and hub ids, revision, cache, token) and without instantiating the config class,
so no remote code runs. ``qwenft data validate`` (the operator's CPU validation Job) and the
trainer's start both call :func:`base_model_problems`.

    problems = base_model_problems("Qwen/Qwen2.5-7B-Instruct-GPTQ-Int4", method="qlora")
"""

from __future__ import annotations

from typing import Any

from qwenft_trainer.config import Method, ModelSource, QuantizationSettings
from qwenft_trainer.quantized import checkpoint_quantization, merge_problem, method_problems
from qwenft_trainer.qwen1 import qwen1_problem


class BaseConfigError(OSError):
    """The base model's ``config.json`` can't be found or read."""


def source_kwargs(source: ModelSource) -> dict[str, Any]:
    """Keyword arguments every ``from_pretrained`` call of this source takes."""
    kwargs: dict[str, Any] = {"trust_remote_code": source.trust_remote_code}
    if source.revision:
        kwargs["revision"] = source.revision
    if source.cache_dir:
        kwargs["cache_dir"] = source.cache_dir
    secret = source.token()
    if secret is not None:
        kwargs["token"] = secret.get_secret_value()
    return kwargs


def config_kwargs(source: ModelSource) -> dict[str, Any]:
    """The source's ``from_pretrained`` keyword arguments that reading a config file uses."""
    return {k: v for k, v in source_kwargs(source).items() if k != "trust_remote_code"}


def read_base_config(name_or_path: str, **kwargs: Any) -> dict[str, Any]:
    """The raw ``config.json`` of a directory or hub id (no config class, no remote code)."""
    from transformers import PreTrainedConfig

    try:
        config, _ = PreTrainedConfig.get_config_dict(name_or_path, **kwargs)
    except (OSError, ValueError) as err:
        raise BaseConfigError(f"can't read the config.json of {name_or_path}: {err}") from err
    if not isinstance(config, dict) or not config:
        raise BaseConfigError(f"can't read the config.json of {name_or_path}: it is empty")
    return config


def config_problems(
    config: dict[str, Any],
    *,
    name: str,
    method: Method | None = None,
    quantization: QuantizationSettings | None = None,
) -> list[str]:
    """Why this checkpoint can't be trained with ``method`` (None: checked for any method)."""
    legacy = qwen1_problem(config, name=name)
    if legacy:
        return [legacy]
    if method is None:
        return []
    found = checkpoint_quantization(config)
    return method_problems(found, name=name, method=method, quantization=quantization)


def base_model_problems(
    name: str,
    *,
    method: Method | None = None,
    quantization: QuantizationSettings | None = None,
    merge_into: str | None = None,
    **kwargs: Any,
) -> list[str]:
    """Every reason the run can't train on (and merge into) these checkpoints.

    ``merge_into`` is the model the adapter will be merged into after training (the base
    itself unless an un-quantized one is given); ``kwargs`` go to :func:`read_base_config`.
    Raises :class:`BaseConfigError` when a ``config.json`` can't be read.
    """
    config = read_base_config(name, **kwargs)
    problems = config_problems(config, name=name, method=method, quantization=quantization)
    if merge_into is not None and not problems:
        unpinned = {k: v for k, v in kwargs.items() if k != "revision"}  # the base's own pin
        target = config if merge_into == name else read_base_config(merge_into, **unpinned)
        refusal = merge_problem(checkpoint_quantization(target), name=merge_into)
        if refusal:
            problems.append(refusal)
    return problems
