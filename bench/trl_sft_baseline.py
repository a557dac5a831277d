"""The TRL arm of bench_train.py: ``trl.SFTTrainer`` with packing on, its default strategy.

TRL's SFTTrainer is the common way to fine-tune a Qwen model with LoRA outside this project,
and its packing (best-fit decreasing into ``max_length`` rows, padding-free batches with
position ids) and its loss (the logits projected in tiles, never the whole tensor) make it
the strongest peer to measure against. This script trains the same LoRA (targets, rank,
alpha, dropout) with the same optimizer settings, batch tokens and gradient checkpointing as
the qwenft arm, on the same tokenization: each dialogue's token ids with an
``assistant_masks`` column from qwenft's assistant-only labels, so both train the same
tokens. bench_train.py runs it in its own process and reads ``result.json``.

    python bench/trl_sft_baseline.py --model M --data D --output O --max-seq-length 2048
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from datasets import Dataset
from peft import LoraConfig
from qwenft_trainer.config import QWEN2_LINEAR_MODULES
from qwenft_trainer.data import IGNORE_INDEX, tokenize_all
from qwenft_trainer.formats import load_conversations
from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig
from trl import SFTConfig, SFTTrainer


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--output", required=True, type=Path)
    parser.add_argument("--max-seq-length", type=int, required=True)
    parser.add_argument("--batch-size", type=int, default=1, help="packed rows per device step")
    parser.add_argument("--grad-accum", type=int, default=1)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--lora-r", type=int, default=8)
    parser.add_argument("--lora-alpha", type=int, default=16)
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--precision", choices=["bf16", "fp32"], default="fp32")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument(
        "--load-in-4bit",
        action="store_true",
        help="Q-LoRA: NF4 base with double quantization, bf16 compute (qwenft's defaults)",
    )
    args = parser.parse_args(argv)

    cuda = torch.cuda.is_available()
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    dtype = torch.bfloat16 if args.precision == "bf16" else torch.float32
    quantization = None
    if args.load_in_4bit:
        quantization = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16,
        )
    model = AutoModelForCausalLM.from_pretrained(
        args.model,
        dtype=dtype,
        attn_implementation="sdpa",
        quantization_config=quantization,
        **({"device_map": {"": 0}} if quantization else {}),
    )
    model.config.use_cache = False
    samples = tokenize_all(load_conversations(args.data), tokenizer, args.max_seq_length)
    dataset = Dataset.from_list(
        [
            {
                "input_ids": s.input_ids,
                "assistant_masks": [int(label != IGNORE_INDEX) for label in s.labels],
            }
            for s in samples
        ]
    )
    config = SFTConfig(
        output_dir=str(args.output),
        packing=True,  # packing_strategy stays TRL's default ("bfd")
        max_length=args.max_seq_length,
        per_device_train_batch_size=args.batch_size,
        gradient_accumulation_steps=args.grad_accum,
        learning_rate=args.learning_rate,
        num_train_epochs=1,
        lr_scheduler_type="cosine",
        warmup_steps=0.03,
        max_grad_norm=1.0,
        gradient_checkpointing=args.gradient_checkpointing,
        bf16=args.precision == "bf16",
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        dataloader_num_workers=0,
        use_cpu=not cuda,
        seed=args.seed,
        data_seed=args.seed,
    )
    trainer = SFTTrainer(
        model=model,
        args=config,
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=LoraConfig(
            r=args.lora_r,
            lora_alpha=args.lora_alpha,
            lora_dropout=0.05,
            target_modules=list(QWEN2_LINEAR_MODULES),
            task_type="CAUSAL_LM",
        ),
    )
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    trainer.train()
    wall = time.perf_counter() - start
    trainer.model.save_pretrained(str(args.output / "adapter"))
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    result = {
        "wall_seconds": wall,
        "steps": trainer.state.global_step,
        "train_loss": losses[-1] if losses else None,
        "trained_tokens": sum(s.trained_tokens for s in samples),
        "samples": len(samples),
        "peak_gpu_memory_bytes": torch.cuda.max_memory_allocated() if cuda else None,
    }
    (args.output / "result.json").write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
