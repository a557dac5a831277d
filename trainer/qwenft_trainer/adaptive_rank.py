"""Adaptive rank (AdaLoRA) in the training loop: budget updates, checkpoints and resume.

peft's AdaLoRA keeps each adapted matrix as P·diag(E)·Q and scores its singular values by
importance; ``update_and_allocate(step)`` must run after every optimizer step, while the
gradients are still there, to update those scores and zero the least important values
(``lora.adaptive``: :class:`~qwenft_trainer.config.AdaptiveRankSettings`). The Hugging Face
Trainer's ``on_optimizer_step`` is that moment (after ``optimizer.step()``, before
``zero_grad()``, once per accumulated step), so a callback calls it there.

Two things peft keeps only in memory would be lost by a restart: the importance averages
and the rank pattern (which values are kept). And peft saves an adapter with its rank
pattern applied, each matrix cut to its kept rank, which a resumed run (full-rank modules,
optimizer moments of the full rank) can't load. So a checkpoint holds the adapter at its
full rank, the pruned values zero, plus :data:`STATE_FILE` with the averages and the
pattern; resuming restores both, and the run continues as if never stopped. The final
adapter is saved the way peft serves it: cut to the kept ranks, the pattern in
``adapter_config.json``.

    callback = AdaptiveRankCallback(resume_from=checkpoint_dir_or_None)
    trainer.add_callback(callback)
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from qwenft_trainer.checkpoints import PREFIX
from qwenft_trainer.config import AdaptiveRankSettings, TrainConfig

if TYPE_CHECKING:
    from peft import AdaLoraConfig

log = logging.getLogger(__name__)

# In each checkpoint: the importance averages and rank pattern (torch.save of plain dicts).
STATE_FILE = "adaptive_rank.pt"
ADAPTER = "default"


def build_adalora_config(
    config: TrainConfig, adaptive: AdaptiveRankSettings, **lora_kwargs: Any
) -> AdaLoraConfig:
    """peft's ``AdaLoraConfig`` for the run; ``lora_kwargs`` are the targets and dropout.

    ``total_step`` is ``training.max_steps`` when set; a run sized by epochs learns its
    step count only when the Trainer starts, and :class:`AdaptiveRankCallback` sets it then.
    """
    from peft import AdaLoraConfig

    planned = config.training.max_steps
    total = planned if planned > 0 else adaptive.warmup_steps + adaptive.final_steps + 1
    return AdaLoraConfig(
        init_r=config.lora.r,
        target_r=adaptive.target_rank,
        tinit=adaptive.warmup_steps,
        tfinal=adaptive.final_steps,
        deltaT=adaptive.interval,
        beta1=adaptive.beta1,
        beta2=adaptive.beta2,
        orth_reg_weight=adaptive.orthogonal_regularization,
        total_step=total,
        lora_alpha=config.lora.alpha,
        **lora_kwargs,
    )


def _adalora(model: Any) -> Any:
    """The ``AdaLoraModel`` inside a peft model (``model.base_model``)."""
    inner = getattr(model, "base_model", None)
    if inner is None or not hasattr(inner, "update_and_allocate"):
        raise TypeError(f"{type(model).__name__} holds no AdaLoRA adapter")
    return inner


def save_full_rank(model: Any, directory: str | Path) -> None:
    """Write the adapter at its full rank (pruned values zero) and the allocator's state.

    peft would cut each matrix to its kept rank while saving; the pattern is set aside for
    the write, so the checkpoint's tensors have the shapes the training modules have.
    """
    import torch

    adalora = _adalora(model)
    peft_config = adalora.peft_config[ADAPTER]
    pattern = peft_config.rank_pattern
    peft_config.rank_pattern = None
    try:
        model.save_pretrained(str(directory), safe_serialization=True)
    finally:
        peft_config.rank_pattern = pattern
    allocator = adalora.rankallocator
    state = {
        "rank_pattern": pattern,
        "total_step": peft_config.total_step,
        "ipt": allocator.ipt,
        "exp_avg_ipt": allocator.exp_avg_ipt,
        "exp_avg_unc": allocator.exp_avg_unc,
    }
    torch.save(state, Path(directory) / STATE_FILE)


def restore_state(model: Any, directory: str | Path) -> None:
    """Give the allocator back the importance averages and rank pattern of a checkpoint."""
    import torch

    path = Path(directory) / STATE_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: {directory} was not written by an adaptive-rank (lora.adaptive) "
            "run; resume it with the settings it was trained with"
        )
    device = next(model.parameters()).device
    state = torch.load(path, map_location=device, weights_only=True)
    adalora = _adalora(model)
    adalora.peft_config[ADAPTER].rank_pattern = state["rank_pattern"]
    allocator = adalora.rankallocator
    allocator.ipt = state["ipt"]
    allocator.exp_avg_ipt = state["exp_avg_ipt"]
    allocator.exp_avg_unc = state["exp_avg_unc"]


def export_checkpoint(model: Any, checkpoint: str | Path, output_dir: str | Path) -> None:
    """Save a full-rank checkpoint's adapter to ``output_dir`` cut to its kept ranks."""
    model.load_adapter(str(checkpoint), ADAPTER, is_trainable=True)
    restore_state(model, checkpoint)
    model.save_pretrained(str(output_dir), safe_serialization=True)


def kept_ranks(rank_pattern: dict[str, Any]) -> dict[str, int]:
    """Rank each matrix keeps, by module path, from a saved ``rank_pattern``."""
    return {
        name.removesuffix(f".{ADAPTER}").removesuffix(".lora_E"): int(sum(bool(v) for v in mask))
        for name, mask in rank_pattern.items()
    }


class AdaptiveRankCallback(TrainerCallback):
    """Calls AdaLoRA's budget update after each optimizer step; saves and restores its state.

    Put it before the checkpoint-marking callback, so a checkpoint is only marked complete
    once its full-rank adapter and :data:`STATE_FILE` are written.
    """

    def __init__(self, settings: AdaptiveRankSettings, *, resume_from: Path | None) -> None:
        self.settings = settings
        self.resume_from = resume_from

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any
    ) -> None:
        model = kw["model"]
        adalora = _adalora(model)
        problem = self.settings.schedule_problem(state.max_steps, source="as the Trainer planned")
        if problem:
            raise ValueError(problem)
        adalora.rankallocator.set_total_step(state.max_steps)
        if self.resume_from is not None:
            restore_state(model, self.resume_from)
            log.info("adaptive rank: budget state restored from %s", self.resume_from)

    def on_optimizer_step(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any
    ) -> None:
        # global_step is still the number of steps before this one, as peft counts
        _adalora(kw["model"]).update_and_allocate(state.global_step)

    def on_train_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any
    ) -> None:
        pattern = _adalora(kw["model"]).peft_config[ADAPTER].rank_pattern
        if pattern and state.is_world_process_zero:
            ranks = kept_ranks(pattern).values()
            log.info(
                "adaptive rank: %d matrices keep %.2f on average (target %d), %d to %d",
                len(ranks),
                sum(ranks) / len(ranks),
                self.settings.target_rank,
                min(ranks),
                max(ranks),
            )

    def on_save(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any
    ) -> None:
        if state.is_world_process_zero:
            save_full_rank(kw["model"], Path(args.output_dir) / f"{PREFIX}{state.global_step}")
