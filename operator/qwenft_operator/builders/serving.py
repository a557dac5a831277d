"""The serving step: a Deployment running the fine-tuned model and a Service in front.

Engine ``builtin`` runs the trainer image's ``qwenft serve``; engine ``vllm`` runs vLLM's
OpenAI server. What they load is a :class:`ServeTarget`: the merged model, the full
fine-tune's weights, or the base with the adapter on top (vLLM: ``--enable-lora`` with a
``--max-lora-rank`` it accepts, decided by the trainer's own rules in
:mod:`qwenft_trainer.vllm_serving` applied to the adapter the spec will produce).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from qwenft_trainer import exit_codes, vllm_serving

from qwenft_operator import labels
from qwenft_operator.builders import paths, pods
from qwenft_operator.names import child_name
from qwenft_operator.parsed_run import Run

SERVE_PORT = 8000
# `qwenft serve` exits with this when spec.inference.checkpoint isn't kept.
CHECKPOINT_NOT_FOUND_EXIT_CODE = exit_codes.CHECKPOINT_NOT_FOUND
VLLM_COMMAND = ["python3", "-m", "vllm.entrypoints.openai.api_server"]
STARTUP_PROBE_PERIOD = 10
STARTUP_PROBE_FAILURES = 180  # 30 minutes to download and load a large model


@dataclass(frozen=True)
class ServeTarget:
    """What the server loads.

    ``model`` is a directory in the pod (or a hub id, read at ``revision``, the one the run
    trained on); ``adapter``, when set, is an adapter directory served over ``model`` under
    the run's served model name; ``max_lora_rank`` is vLLM's ``--max-lora-rank`` for it.
    """

    model: str
    adapter: str | None = None
    max_lora_rank: int | None = None
    revision: str | None = None
    # spec.inference.checkpoint, for the builtin server to resolve against the adapter's
    # run (or, without an adapter, the model's: a full fine-tune) when it starts.
    checkpoint: str | None = None


def predicted_adapter_config(run: Run) -> dict[str, Any]:
    """The ``adapter_config.json`` the trainer will write for this spec (the fields the
    serving decision reads), so the operator decides without reading the output volume."""
    lora = run.spec.lora
    # Unset targets are the architecture's defaults (qwenft_trainer.targets), which vLLM
    # serves; unset target_parameters may be expert tensors, which it doesn't (see below).
    router = ["mlp.gate"] if lora.train_router else []
    adaptive = lora.adaptive is not None
    return {
        # lora.adaptive trains an AdaLoRA adapter (qwenft_trainer.adaptive_rank)
        "peft_type": "ADALORA" if adaptive else "LORA",
        "r": lora.r,
        **({"init_r": lora.r} if adaptive else {}),
        "lora_alpha": lora.alpha,
        "target_modules": list(lora.target_modules) if lora.target_modules else None,
        "target_parameters": lora.target_parameters,
        "modules_to_save": list(lora.modules_to_save) + router or None,
        "bias": "none",
        "base_model_name_or_path": paths.model_location(run),
    }


def vllm_decision(run: Run) -> vllm_serving.VllmDecision:
    """How vLLM would serve this run's adapter: the trainer's :func:`~qwenft_trainer.vllm_serving.
    decide_vllm` over the adapter config this spec makes the trainer write.

    The operator never sees the base's config, so with ``lora.targetParameters`` unset it
    can't tell a dense base (nothing to adapt) from a MoE one (experts adapted, which vLLM
    serves only merged) and merges to be safe.
    """
    config = predicted_adapter_config(run)
    unknown = []
    if config["target_parameters"] is None:
        unknown.append(
            "lora.targetParameters is unset: on a MoE base the adapter holds expert tensors, "
            "which vLLM serves only merged; set lora.targetParameters: [] (a dense base, or "
            "experts left frozen) to serve the adapter unmerged"
        )
    return vllm_serving.decide_vllm(
        config,
        served_model_name=run.served_model_name,
        adapter_path=paths.adapter_dir(run),
        base_model=paths.model_location(run),
        more_reasons=unknown,
    )


def needs_merge(run: Run) -> bool:
    """Whether a merge Job runs: asked for, or vLLM can't serve the adapter unmerged."""
    spec = run.spec
    if spec.method == "full":
        return False
    if spec.merge.enabled:
        return True
    inference = spec.inference
    if inference.server is not None:  # a QwenModelServer serves the adapter itself
        return False
    # vLLM can't resolve a checkpoint choice itself: the merge Job does, next to the files.
    return (
        inference.enabled
        and inference.engine == "vllm"
        and (inference.checkpoint is not None or vllm_decision(run).requires_merge)
    )


def build_serve_target(run: Run) -> ServeTarget:
    """What the server loads: full weights, the merged model, or base + adapter (a chosen
    checkpoint of the full weights or of the adapter; the merged model has it merged)."""
    choice = run.spec.inference.checkpoint
    checkpoint = None if choice is None else str(choice)
    if run.spec.method == "full":
        return ServeTarget(model=paths.adapter_dir(run), checkpoint=checkpoint)
    if needs_merge(run):
        return ServeTarget(model=paths.merged_dir(run))
    rank = None
    if run.spec.inference.engine == "vllm":
        rank = vllm_decision(run).max_lora_rank
    return ServeTarget(
        model=paths.model_location(run),
        adapter=paths.adapter_dir(run),
        max_lora_rank=rank,
        revision=paths.model_revision(run),
        checkpoint=checkpoint,
    )


def served_checkpoint(run: Run) -> str:
    """The checkpoint choice the server serves (``best``, a step, or ``final``): resolved by
    the builtin server itself, or merged by the merge Job."""
    return labels.checkpoint_value(run.spec.inference.checkpoint)


def build_builtin_args(run: Run, target: ServeTarget) -> list[str]:
    """``qwenft serve`` command line."""
    args = ["qwenft", "serve", "--model", target.model]
    if target.revision:
        args += ["--revision", target.revision]
    if target.adapter:
        args += ["--adapter", f"{run.served_model_name}={target.adapter}"]
    else:
        args += ["--served-model-name", run.served_model_name]
    if target.checkpoint:
        args += ["--checkpoint", target.checkpoint]
    args += ["--host", "0.0.0.0", "--port", str(SERVE_PORT)]
    if run.spec.inference.max_model_len:
        args += ["--max-model-len", str(run.spec.inference.max_model_len)]
    return args


def build_vllm_args(run: Run, target: ServeTarget) -> list[str]:
    """vLLM OpenAI server arguments (after :data:`VLLM_COMMAND`)."""
    if target.checkpoint:
        raise ValueError("vLLM can't resolve a checkpoint choice: serve the merged model")
    inference = run.spec.inference
    args = ["--model", target.model]
    if target.revision:  # vLLM reads the tokenizer at its own revision, default main
        args += ["--revision", target.revision, "--tokenizer-revision", target.revision]
    if target.adapter:
        if target.max_lora_rank is None:
            raise ValueError("vLLM serving an adapter needs target.max_lora_rank")
        modules = {run.served_model_name: target.adapter}
        args += vllm_serving.lora_args(modules, max_lora_rank=target.max_lora_rank)
    else:
        args += ["--served-model-name", run.served_model_name]
    args += ["--host", "0.0.0.0", "--port", str(SERVE_PORT)]
    if inference.gpus > 1:
        args += ["--tensor-parallel-size", str(inference.gpus)]
    if inference.max_model_len:
        args += ["--max-model-len", str(inference.max_model_len)]
    if run.spec.model.trust_remote_code:
        args.append("--trust-remote-code")
    return args


def endpoint_url(run: Run) -> str:
    """In-cluster base URL of the OpenAI-compatible API (``status.endpoint.url``): the
    run's own Service, or that of the QwenModelServer it attaches to (``<server>-server``,
    named as in :mod:`qwenft_operator.model_server.builders`)."""
    server = run.spec.inference.server
    service = child_name(server, "server") if server else run.names.serve_service
    return f"http://{service}.{run.namespace}.svc:{SERVE_PORT}/v1"


def _probe(path: str, **extra: int) -> dict[str, Any]:
    return {"httpGet": {"path": path, "port": "http"}, **extra}


def build_serve_deployment(run: Run, target: ServeTarget) -> dict[str, Any]:
    """Deployment ``<run>-serve``; its pod template's
    :data:`~qwenft_operator.labels.CHECKPOINT_ANNOTATION` is :func:`served_checkpoint`, and
    its metadata's :data:`~qwenft_operator.labels.SPEC_DIGEST_ANNOTATION` the digest of its
    spec (replicas, strategy, pod template), by which a changed spec is seen."""
    inference = run.spec.inference
    vllm = inference.engine == "vllm"
    mounts = pods.Mounts(model=True, output=True, output_read_only=True, shm=vllm)
    pod_spec = pods.pod_spec_base(run, mounts)
    if vllm:
        image = run.spec.images.server or run.settings.vllm_image
        command = [*VLLM_COMMAND, *build_vllm_args(run, target)]
        ready, live = "/health", "/health"
    else:
        image = run.spec.images.server or run.trainer_image
        command = build_builtin_args(run, target)
        ready, live = "/readyz", "/healthz"
    pod_spec["containers"] = [
        {
            "name": "server",
            "image": image,
            **pods.image_pull_policy(run),
            "command": command,
            "env": pods.model_env(run),
            "ports": [{"name": "http", "containerPort": SERVE_PORT}],
            "resources": pods.resources(
                inference.resources, gpus=inference.gpus, gpu_resource=run.gpu_resource
            ),
            "startupProbe": _probe(
                live, periodSeconds=STARTUP_PROBE_PERIOD, failureThreshold=STARTUP_PROBE_FAILURES
            ),
            "readinessProbe": _probe(ready, periodSeconds=5, failureThreshold=3),
            "livenessProbe": _probe(live, periodSeconds=20, failureThreshold=3),
            "volumeMounts": pods.volume_mounts(run, mounts),
            "securityContext": pods.container_security_context(),
            "terminationMessagePolicy": "FallbackToLogsOnError",
        }
    ]
    spec = {
        "replicas": inference.replicas,
        "selector": {"matchLabels": labels.build_selector(run.name, "serve")},
        # GPUs are scarce: replace pods one at a time instead of surging.
        "strategy": {
            "type": "RollingUpdate",
            "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1},
        },
        "template": {
            "metadata": {
                "labels": labels.build_labels(run.name, "serve"),
                # a new choice changes the template: the Deployment rolls onto it
                "annotations": {labels.CHECKPOINT_ANNOTATION: served_checkpoint(run)},
            },
            "spec": pod_spec,
        },
    }
    metadata = pods.object_meta(run, run.names.serve_deployment, "serve")
    metadata["annotations"] = {labels.SPEC_DIGEST_ANNOTATION: labels.spec_digest(spec)}
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": metadata, "spec": spec}


def deployment_digest(body: dict[str, Any]) -> str:
    """The :data:`~qwenft_operator.labels.SPEC_DIGEST_ANNOTATION` of a Deployment
    :func:`build_serve_deployment` built."""
    return str(body["metadata"]["annotations"][labels.SPEC_DIGEST_ANNOTATION])


def build_serve_service(run: Run) -> dict[str, Any]:
    """Service ``<run>-serve`` on port 8000 (the endpoint in ``status.endpoint``)."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": pods.object_meta(run, run.names.serve_service, "serve"),
        "spec": {
            "type": "ClusterIP",
            "selector": labels.build_selector(run.name, "serve"),
            "ports": [{"name": "http", "port": SERVE_PORT, "targetPort": "http"}],
        },
    }
