"""One training session: from tokenized samples to a saved adapter (or weights) and a summary.

:mod:`qwenft_trainer.train` decides *what* to train on; this module runs the Hugging Face
Trainer on it the way every rank must agree on: process group first (ZeRO-3 partitions the
model while it loads), then the attention kernel (:mod:`qwenft_trainer.attention`), the
model loaded with it, then the packing decision (rank 0's, probed on the
loaded model), the dataset items packed or not accordingly, then resume from the newest
complete checkpoint, train, save on rank 0, and end with a barrier so no rank leaves while
another writes. A session that fails after the start still writes its reason to the
termination log. A session asked to stop (:mod:`qwenft_trainer.stopping`) ends with a
complete checkpoint, a ``train_stopped`` line and a ``Stopped`` termination log instead of
the final adapter and ``summary.json``, and returns :data:`~qwenft_trainer.exit_codes.STOPPED`.
A rank whose peer is lost (a collective fails) says ``PeerLost`` and leaves at once,
without the final barrier (:mod:`qwenft_trainer.distributed`).

    run_training(config, env, tokenizer, train_samples, eval_samples,
                 started=time.time(), stop=request)

It is over 300 lines because the order of a run (output directory, packing decision,
Trainer, training, stop and peer-loss reports, export) is read best in one place.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qwenft_trainer import checkpoints, distributed, exit_codes
from qwenft_trainer.arguments import build_training_arguments
from qwenft_trainer.attention import AttentionChoice, row_length
from qwenft_trainer.config import TrainConfig
from qwenft_trainer.deepspeed_config import build_deepspeed_config
from qwenft_trainer.distributed import DistributedEnv
from qwenft_trainer.kernels import KernelDecision, apply_kernels
from qwenft_trainer.modeling import choose_attention, count_parameters, load_model, prepare_model
from qwenft_trainer.packing_mode import PackingDecision, build_collator
from qwenft_trainer.stopping import StopCallback, StopRequest, any_rank
from qwenft_trainer.summary import (
    TokenCacheRecord,
    TrainSummary,
    last_logged,
    peak_gpu_memory_bytes,
    peak_host_memory_bytes,
    short_summary,
    write_summary,
    write_termination_log,
)
from qwenft_trainer.telemetry import TelemetryCallback, TrainMetrics, build_log_record, emit

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase, Trainer

    from qwenft_trainer.data import TokenizedSample

log = logging.getLogger(__name__)

# Called with the model once it is prepared for its method (adapters added), before any step.
ModelHook = Callable[["PreTrainedModel"], None]


def _announce(
    config: TrainConfig,
    env: DistributedEnv,
    resumed_from: int,
    packing: PackingDecision,
    attention: AttentionChoice,
    kernels: KernelDecision,
) -> None:
    """Log the effective batch, attention, packing, loss path, advice and resume point once,
    on rank 0."""
    if not env.is_main:
        return
    t = config.training
    effective = config.effective_batch_size(env.world_size)
    log.info(
        "effective batch %d = %d per device x %d accumulation x %d processes (%d node(s))",
        effective,
        t.per_device_batch_size,
        t.gradient_accumulation_steps,
        env.world_size,
        env.nodes,
    )
    log.info("%s", attention.log_line())
    log.info("%s", packing.log_line())
    log.info("%s", kernels.log_line())
    advice = config.advice()
    for note in advice:
        log.warning("config advice: %s", note)
    if resumed_from:
        log.info("resuming from step %d (newest complete checkpoint)", resumed_from)
    emit(
        build_log_record(
            "train_start",
            run=config.run_name,
            method=config.method,
            world_size=env.world_size,
            nodes=env.nodes,
            effective_batch_size=effective,
            deepspeed_zero_stage=config.deepspeed.zero_stage if config.deepspeed.enabled else None,
            resumed_from_step=resumed_from,
            attention=attention.implementation,
            attention_reason=attention.reason,
            packing=packing.mode,
            packing_reason=packing.reason,
            loss_path=kernels.path,
            loss_path_reason=kernels.reason,
            advice=advice,
        )
    )


def _prepare_output_dir(config: TrainConfig, env: DistributedEnv) -> int:
    """Create ``output_dir``, drop half-written checkpoints, return the step to resume from.

    Rank 0 decides and every rank gets its answer, so all ranks resume from one step.
    """
    step = 0
    if env.is_main:
        os.makedirs(config.output_dir, exist_ok=True)
        if config.checkpoint.resume:
            for path in checkpoints.remove_incomplete(config.output_dir):
                log.warning("removed half-written checkpoint %s (no completion marker)", path)
            newest = checkpoints.newest_complete(config.output_dir)
            step = newest.step if newest else 0
    return distributed.broadcast_int(step)


def _decide_packing(
    config: TrainConfig,
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    device: str,
    rows: int | None,
) -> PackingDecision:
    """Every rank decides and probes; rank 0's decision is the one all ranks train with."""
    from qwenft_trainer.packing_mode import configure_model_for_packing, decision_from_text

    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    mine = configure_model_for_packing(
        model,
        requested=config.training.packing,
        pad_token_id=pad_id,
        device=device,
        row_length=rows,
    )
    mode, reason = distributed.broadcast_texts([mine.mode, mine.reason])
    if mode != mine.mode:
        log.warning("this rank's %s; rank 0 decided %s for all", mine.log_line(), mode)
    return decision_from_text(mode, reason)


def _build_trainer(
    config: TrainConfig,
    env: DistributedEnv,
    tokenizer: PreTrainedTokenizerBase,
    train_samples: list[TokenizedSample],
    eval_samples: list[TokenizedSample] | None,
    *,
    cuda: bool,
    callbacks: list[Any],
    resume_from: Path | None = None,
    on_model_prepared: ModelHook | None = None,
) -> tuple[Trainer, PackingDecision, AttentionChoice, KernelDecision]:
    from transformers import PrinterCallback, ProgressCallback, Trainer, set_seed

    from qwenft_trainer.packing import build_features

    ds_config = build_deepspeed_config(config)
    args = build_training_arguments(
        config,
        use_cpu=not cuda,
        deepspeed=ds_config,
        has_eval=eval_samples is not None,
        world_size=env.world_size,
    )
    _ = args.device  # sets up the accelerator state before the model is built
    # Seed before the adapters are created: their initialisation must not depend on
    # whatever ran first, or a rerun (and every rank under ZeRO-3) starts elsewhere.
    set_seed(config.training.seed)
    device = distributed.device_of(env, cuda=cuda)
    attention = choose_attention(config, cuda=cuda)
    model = load_model(config, device=device, attention=attention)
    length = config.training.max_seq_length
    rows = row_length(attention.implementation, length)
    packing = _decide_packing(config, model, tokenizer, device, rows)
    # after the packing probe (which reads logits), before PEFT wraps the model
    kernels = apply_kernels(model, config, cuda=cuda)
    model = prepare_model(model, config)
    if on_model_prepared is not None:
        on_model_prepared(model)
    trainable, total = count_parameters(model)
    log.info("%s: %d of %d parameters trainable", config.method, trainable, total)
    first: list[Any] = []
    if config.lora.adaptive is not None and config.method != "full":
        from qwenft_trainer.adaptive_rank import AdaptiveRankCallback

        # before the checkpoint marker: a checkpoint is complete with its budget state
        first.append(AdaptiveRankCallback(config.lora.adaptive, resume_from=resume_from))
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=build_features(train_samples, length, packing=packing.packed),
        eval_dataset=(
            build_features(eval_samples, length, packing=packing.packed)
            if eval_samples is not None
            else None
        ),
        data_collator=build_collator(config, tokenizer, packing.mode, row_length=rows),
        processing_class=tokenizer,
        callbacks=[
            *first,
            checkpoints.CheckpointCallback(keep=config.checkpoint.keep),
            *callbacks,
        ],
    )
    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    return trainer, packing, attention, kernels


def run_training(
    config: TrainConfig,
    env: DistributedEnv,
    tokenizer: PreTrainedTokenizerBase,
    train_samples: list[TokenizedSample],
    eval_samples: list[TokenizedSample] | None,
    *,
    started: float,
    stop: StopRequest | None = None,
    token_cache: TokenCacheRecord | None = None,
    on_model_prepared: ModelHook | None = None,
) -> int:
    """Train, save and summarise; returns the process exit code.

    ``token_cache`` says where the samples came from, for ``summary.json``;
    ``on_model_prepared`` is called with the model once it is prepared for its method.
    """
    import torch

    cuda = torch.cuda.is_available()
    distributed.ensure_extensions_cache()
    distributed.init_process_group(env, deepspeed=config.deepspeed.enabled, cuda=cuda)
    broken = False
    try:
        resumed_from = _prepare_output_dir(config, env)
        metrics = None
        if env.is_main and config.metrics_port:
            metrics = TrainMetrics(run=config.run_name, cuda=cuda)
            metrics.serve(config.metrics_port)
        telemetry = TelemetryCallback(
            metrics,
            samples_per_step=config.effective_batch_size(env.world_size),
            resumed_from_step=resumed_from,
            progress_bar=env.is_main,
        )
        stopper = StopCallback(stop or StopRequest())
        resume = checkpoints.Checkpoint(
            Path(config.output_dir) / f"{checkpoints.PREFIX}{resumed_from}", resumed_from, True
        )
        trainer, packing, attention, kernels = _build_trainer(
            config,
            env,
            tokenizer,
            train_samples,
            eval_samples,
            cuda=cuda,
            callbacks=[telemetry, stopper],
            resume_from=resume.path if resumed_from else None,
            on_model_prepared=on_model_prepared,
        )
        _announce(config, env, resumed_from, packing, attention, kernels)
        train_start = time.time()
        eval_loss = telemetry.last_eval_loss
        if resumed_from and checkpoints.is_final(resume, config.training.max_steps):
            _export_finished(trainer, resume, config, env)
        elif any_rank(stopper.request.requested, distributed.device_of(env, cuda=cuda)):
            # asked to stop while loading: nothing new to save, the newest checkpoint stands
            return _report_stopped(config, env, stopper, resumed_from)
        else:
            trainer.train(resume_from_checkpoint=str(resume.path) if resumed_from else None)
            if stopper.stopped_at is not None:
                return _report_stopped(config, env, stopper, stopper.stopped_at)
            if eval_samples is not None:
                eval_loss = float(trainer.evaluate()["eval_loss"])
            trainer.save_model(config.output_dir)
        wall = time.time() - train_start
        summary = _summarise(
            config, env, trainer, resumed_from, wall, eval_loss, packing, attention, kernels
        )
        summary.token_cache = token_cache
        # Every rank says where it stopped: ranks that disagree show up in the logs.
        emit(
            build_log_record("rank_end", rank=env.rank, step=summary.steps, loss=summary.train_loss)
        )
        if env.is_main:
            tokenizer.save_pretrained(config.output_dir)
            write_summary(config.output_dir, summary)
            write_termination_log(config.termination_log, short_summary(summary))
            emit(build_log_record("train_end", **summary.model_dump()))
    except Exception as err:
        broken = env.distributed and distributed.is_communication_error(err)
        if broken:
            _report_peer_lost(config, env, err)
        elif env.is_main:
            fields = {"status": "failed", "reason": "TrainingError", "message": repr(err)}
            write_termination_log(config.termination_log, fields)
        raise
    finally:
        distributed.finish(deepspeed=config.deepspeed.enabled, broken=broken)
    log.info("done in %.1fs; output in %s", time.time() - started, config.output_dir)
    return 0


def _report_stopped(
    config: TrainConfig, env: DistributedEnv, stopper: StopCallback, step: int
) -> int:
    """Tell the launcher, the operator and the logs where a stopped run can resume."""
    path = Path(config.output_dir) / f"{checkpoints.PREFIX}{step}"
    saved = step > 0 and (path / checkpoints.MARKER).is_file()
    cause = stopper.request.cause or "another rank"
    where = f"{path} is complete and a restart resumes from it" if saved else "nothing to save"
    message = f"stopped at step {step} ({cause}); {where}"
    checkpoint = str(path) if saved else None
    emit(build_log_record("rank_end", rank=env.rank, step=step, stopped=True))
    if env.is_main:
        log.warning("%s", message)
        emit(build_log_record("train_stopped", step=step, checkpoint=checkpoint, cause=cause))
    if env.local_rank == 0:
        # every pod (node) reports it: its launcher turns this into the "stopped" exit code
        fields = {
            "status": "stopped",
            "reason": exit_codes.STOPPED_REASON,
            "message": message,
            "step": step,
        }
        write_termination_log(config.termination_log, {**fields, "checkpoint": checkpoint})
    return exit_codes.STOPPED


def _report_peer_lost(config: TrainConfig, env: DistributedEnv, err: BaseException) -> None:
    """A collective failed: say so at once, on stderr, in a JSON line and the termination log.

    Every rank that sees it reports it (the lost rank can't); the pod's termination
    message then names the reason, and the operator restarts all ranks together.
    """
    detail = next((line.strip() for line in str(err).splitlines() if line.strip()), repr(err))
    message = (
        f"rank {env.rank} lost contact with another rank (a collective failed: {detail}); "
        "every rank must restart from the newest complete checkpoint"
    )
    print(f"qwenft train: {message}", file=sys.stderr, flush=True)
    emit(build_log_record("peer_lost", rank=env.rank, message=detail))
    if env.local_rank == 0:
        fields = {"status": "failed", "reason": exit_codes.PEER_LOST, "message": message}
        write_termination_log(config.termination_log, fields)


def _export_finished(
    trainer: Trainer, final: checkpoints.Checkpoint, config: TrainConfig, env: DistributedEnv
) -> None:
    """The run already reached its last step before a restart: publish that checkpoint."""
    from transformers import TrainerState

    log.info("training already finished at step %d; exporting %s", final.step, final.path)
    trainer.state = TrainerState.load_from_json(str(final.path / checkpoints.TRAINER_STATE))
    if env.is_main:
        checkpoints.export_final(final, config.output_dir)
        if config.lora.adaptive is not None and config.method != "full":
            from qwenft_trainer.adaptive_rank import export_checkpoint

            # the checkpoint holds the full-rank adapter; publish it cut to its kept ranks
            export_checkpoint(trainer.model, final.path, config.output_dir)
    distributed.barrier()


def _summarise(
    config: TrainConfig,
    env: DistributedEnv,
    trainer: Trainer,
    resumed_from: int,
    wall: float,
    eval_loss: float | None,
    packing: PackingDecision,
    attention: AttentionChoice,
    kernels: KernelDecision,
) -> TrainSummary:
    state = trainer.state
    tokens = int(state.num_input_tokens_seen or 0)
    # tokens of this session only (none when a finished run was just exported)
    session_tokens = tokens - int(getattr(trainer, "_initial_num_input_tokens_seen", tokens) or 0)
    history: list[dict[str, Any]] = state.log_history
    return TrainSummary(
        run_name=config.run_name,
        method=config.method,
        output_dir=config.output_dir,
        output="full" if config.method == "full" else "adapter",
        steps=state.global_step,
        total_steps=state.max_steps,
        epochs=float(state.epoch or 0.0),
        train_loss=last_logged(history, "loss"),
        eval_loss=eval_loss,
        trained_tokens=tokens,
        wall_seconds=round(wall, 3),
        tokens_per_second=round(session_tokens / wall, 3) if wall > 0 else 0.0,
        peak_gpu_memory_bytes=peak_gpu_memory_bytes(),
        peak_host_memory_bytes=peak_host_memory_bytes(),
        resumed_from_step=resumed_from,
        world_size=env.world_size,
        effective_batch_size=config.effective_batch_size(env.world_size),
        packing=packing.mode,
        packing_reason=packing.reason,
        attention=attention.implementation,
        attention_reason=attention.reason,
        loss_path=kernels.path,
        loss_path_reason=kernels.reason,
    )
