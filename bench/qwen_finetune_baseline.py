"""The baseline of bench_train.py: Qwen's ``finetune.py`` recipe, reproduced.

Qwen's reference script fine-tunes with the Hugging Face Trainer and PEFT LoRA on
dialogues each padded to ``model_max_length`` (no packing), loss on assistant replies
only. This script does the same on the benchmark's data so the comparison measures the
recipe, not the data handling: labels come from the same tokenization as qwenft's (same
tokens trained), and every sample is padded to the maximum length as ``finetune.py``'s
``preprocess`` does. bench_train.py runs it in its own process and reads ``result.json``.

    python bench/qwen_finetune_baseline.py --model M --data D --output O --max-seq-length 256
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig, get_peft_model
from qwenft_trainer.config import QWEN2_LINEAR_MODULES
from qwenft_trainer.data import tokenize_all
from qwenft_trainer.formats import load_conversations
from qwenft_trainer.packing import PaddingCollator
from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer, TrainingArguments


class CountingCollator:
    """Pads every sample to max_seq_length and counts real vs computed tokens."""

    def __init__(self, pad: PaddingCollator) -> None:
        self.pad = pad
        self.real_tokens = 0
        self.computed_tokens = 0

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        batch = self.pad(features)
        self.real_tokens += int(batch["attention_mask"].sum())
        self.computed_tokens += batch["input_ids"].numel()
        return batch


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--output", required=True, type=Path)
    parser.add_argument("--max-seq-length", type=int, required=True)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--grad-accum", type=int, default=2)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--lora-r", type=int, default=8)
    parser.add_argument("--lora-alpha", type=int, default=16)
    parser.add_argument("--precision", choices=["bf16", "fp32"], default="fp32")
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args(argv)

    cuda = torch.cuda.is_available()
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    dtype = torch.bfloat16 if args.precision == "bf16" else torch.float32
    model = AutoModelForCausalLM.from_pretrained(
        args.model, dtype=dtype, attn_implementation="sdpa"
    )
    model.config.use_cache = False
    model = get_peft_model(
        model,
        LoraConfig(
            r=args.lora_r,
            lora_alpha=args.lora_alpha,
            lora_dropout=0.05,
            target_modules=list(QWEN2_LINEAR_MODULES),
            task_type="CAUSAL_LM",
        ),
    )
    samples = tokenize_all(load_conversations(args.data), tokenizer, args.max_seq_length)
    collator = CountingCollator(
        PaddingCollator(tokenizer, max_seq_length=args.max_seq_length, pad_to_max=True)
    )
    training_args = TrainingArguments(
        output_dir=str(args.output),
        per_device_train_batch_size=args.batch_size,
        gradient_accumulation_steps=args.grad_accum,
        learning_rate=args.learning_rate,
        num_train_epochs=args.epochs,
        lr_scheduler_type="cosine",
        warmup_steps=0.03,
        max_grad_norm=1.0,
        gradient_checkpointing=args.gradient_checkpointing,
        bf16=args.precision == "bf16",
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        remove_unused_columns=False,
        dataloader_num_workers=0,
        use_cpu=not cuda,
        seed=args.seed,
        data_seed=args.seed,
    )
    trainer = Trainer(
        model=model,
        args=training_args,
        train_dataset=[s.to_features() for s in samples],
        data_collator=collator,
    )
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    trainer.train()
    wall = time.perf_counter() - start
    model.save_pretrained(str(args.output / "adapter"))
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    result = {
        "wall_seconds": wall,
        "steps": trainer.state.global_step,
        "train_loss": losses[-1] if losses else None,
        "trained_tokens": sum(s.trained_tokens for s in samples) * args.epochs,
        "real_tokens": collator.real_tokens,
        "computed_tokens": collator.computed_tokens,
        "samples": len(samples),
        "peak_gpu_memory_bytes": torch.cuda.max_memory_allocated() if cuda else None,
    }
    (args.output / "result.json").write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
