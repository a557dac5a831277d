"""Training throughput and memory: qwenft against TRL's SFTTrainer and Qwen's recipe, one run.

Three arms train the same LoRA on the same model, the same generated dialogues (short,
multi-turn, mixed English / Chinese, shaped like the project's seed data) and the same
hardware, one epoch each, so all see the same trained tokens:

- qwenft, through its real entry point (``python -m qwenft_trainer.train --config ...``):
  packing on, its loss path from ``training.kernels: auto``;
- TRL (``bench/trl_sft_baseline.py``): ``SFTTrainer`` with packing on (its default ``bfd``
  strategy), the same LoRA, optimizer settings, batch tokens and gradient checkpointing;
- the Qwen recipe (``bench/qwen_finetune_baseline.py``): HF Trainer + PEFT, every sample
  padded to finetune.py's 512 tokens, the same tokens per micro-batch (4 x 512 = 2048).

The default CPU run uses Qwen's real vocabulary (151,936 embedding rows; random weights,
the tiny model's hidden size of 64, so the output head and its logits weigh what they do in
a real checkpoint's training step). Each arm runs in its own process, so peak memory is its
own. Reported per arm: trained tokens/s (assistant tokens / training seconds), useful-token
share, optimizer steps, peak memory (host RSS on CPU, CUDA max allocated on GPU) and the
loss on held-out dialogues after the epoch (on GPU also MFU), with the ratios against TRL.
Goals: against TRL >= 2x trained tokens/s, <= 0.6x peak memory, no worse held-out loss;
against the recipe >= 1.5x, useful-token share >= 0.95. It exits 1 naming every goal missed.

Random-weight shapes for GPU runs (``--model-arch``, built from a config, no hub): Qwen2.5-1.5B,
Qwen3-8B, Qwen3-30B-A3B at 4 layers (MoE) and Qwen3.5's hybrid text model at 4 layers.
``--method qlora`` trains over a 4-bit NF4 base (TRL's arm loads it the same way),
``--arms`` picks the arms, ``--deepspeed-zero 2`` runs the qwenft arm under torchrun with
DeepSpeed ZeRO-2, ``--no-eval`` skips the held-out loss.

    python bench/bench_train.py                                   # CPU, minutes on 2 cores
    python bench/bench_train.py --model-arch qwen2.5-1.5b --device cuda --samples 2000 \\
        --max-seq-length 2048 --rows-per-batch 4 --baseline-batch-size 16
    python bench/bench_train.py --model-arch qwen3-8b --device cuda --arms qwenft,trl \\
        --no-eval --samples 240 --max-seq-length 4096
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml
from qwenft_trainer.formats import load_conversations
from qwenft_trainer.tiny import TinyModelSpec, build_tokenizer, ensure_tiny_qwen

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from support import free_port  # shared with the tests

ROOT = Path(__file__).resolve().parents[1]
POOL = ROOT / "trainer" / "qwenft_trainer" / "assets" / "quickstart-dialogues.jsonl"
# Dense bf16 peak of common training GPUs (tensor cores, no sparsity), FLOP/s.
PEAK_BF16 = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10": 125e12}
# Rows of every Qwen2 / Qwen2.5 / Qwen3 checkpoint's embedding (the tokenizer, padded).
QWEN_VOCAB = 151_936
# How much higher qwenft's held-out loss may be than TRL's and still count as no worse.
LOSS_SLACK = 0.005
# Qwen2.5-1.5B's shape (config.json of Qwen/Qwen2.5-1.5B), for random-weight GPU runs.
QWEN25_1_5B = {
    "hidden_size": 1536,
    "intermediate_size": 8960,
    "num_hidden_layers": 28,
    "num_attention_heads": 12,
    "num_key_value_heads": 2,
    "vocab_size": 151936,
    "max_position_embeddings": 32768,
    "rope_theta": 1_000_000.0,
    "rms_norm_eps": 1e-6,
    "tie_word_embeddings": True,
}
# Qwen3-8B's shape: config.json of Qwen/Qwen3-8B (transformers' Qwen3Config defaults differ:
# intermediate 22016, 32 layers, rope theta 1e4, so every field is spelled out).
QWEN3_8B = {
    "hidden_size": 4096,
    "intermediate_size": 12288,
    "num_hidden_layers": 36,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "head_dim": 128,
    "vocab_size": 151936,
    "max_position_embeddings": 40960,
    "rope_parameters": {"rope_type": "default", "rope_theta": 1_000_000.0},
    "rms_norm_eps": 1e-6,
    "tie_word_embeddings": False,
}
# Qwen3-30B-A3B's shape (config.json of Qwen/Qwen3-30B-A3B) at 4 of its 48 layers.
QWEN3_30B_A3B_REDUCED = {
    "hidden_size": 2048,
    "intermediate_size": 6144,
    "moe_intermediate_size": 768,
    "num_hidden_layers": 4,
    "num_attention_heads": 32,
    "num_key_value_heads": 4,
    "head_dim": 128,
    "num_experts": 128,
    "num_experts_per_tok": 8,
    "norm_topk_prob": True,
    "vocab_size": 151936,
    "max_position_embeddings": 40960,
    "rope_parameters": {"rope_type": "default", "rope_theta": 1_000_000.0},
    "rms_norm_eps": 1e-6,
    "tie_word_embeddings": False,
}
# Qwen3.5's text model: transformers' Qwen3_5TextConfig defaults (hidden 4096, vocabulary
# 248,320, Gated DeltaNet with 16 key / 32 value heads of 128, gated attention with 16 heads
# of 256 and 4 KV heads, every 4th layer full attention) at 4 of its 32 layers: 3 linear-
# attention layers and 1 full-attention layer, the real pattern's period.
QWEN35_REDUCED = {
    "num_hidden_layers": 4,
    "layer_types": ["linear_attention"] * 3 + ["full_attention"],
}
# --model-arch -> (architecture, config fields) of the random-weight shapes.
SHAPES: dict[str, tuple[str, dict[str, Any]]] = {
    "qwen2.5-1.5b": ("qwen2", QWEN25_1_5B),
    "qwen3-8b": ("qwen3", QWEN3_8B),
    "qwen3-30b-a3b-reduced": ("qwen3_moe", QWEN3_30B_A3B_REDUCED),
    "qwen3.5-reduced": ("qwen3_5", QWEN35_REDUCED),
}
ARMS = ("qwenft", "trl", "recipe")
# Q-LoRA goal: an 8B model's peak GPU memory at 4k tokens.
QLORA_PEAK_GIB = 12.0
# Qwen3.5's vision tower, kept minimal: the benchmark trains text only.
TINY_VISION = {
    "depth": 1,
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_heads": 2,
    "patch_size": 4,
    "num_position_embeddings": 64,
}


def build_dialogues(count: int, seed: int) -> list[dict[str, Any]]:
    """Records like the seed's: 1-3 exchanges, some system prompts, both record formats."""
    rng = random.Random(seed)
    exchanges: list[tuple[str, str]] = []
    systems: list[str] = []
    for conv in load_conversations(POOL):
        turns = list(conv.messages)
        if turns[0].role == "system":
            systems.append(turns.pop(0).content)
        exchanges += [(u.content, a.content) for u, a in zip(turns[::2], turns[1::2], strict=False)]
    records: list[dict[str, Any]] = []
    for n in range(count):
        messages: list[dict[str, str]] = []
        if rng.random() < 0.2:
            messages.append({"role": "system", "content": rng.choice(systems)})
        for user, assistant in rng.sample(exchanges, rng.choice([1, 1, 2, 2, 3])):
            messages += [
                {"role": "user", "content": user},
                {"role": "assistant", "content": assistant},
            ]
        if n % 2:
            records.append({"training_sample": {"domain": "bench", "conversations": messages}})
        else:
            records.append({"conversation_id": f"bench-{n}", "dialogue_sequence": messages})
    return records


def write_jsonl(path: Path, records: list[dict[str, Any]]) -> Path:
    lines = (json.dumps(r, ensure_ascii=False) for r in records)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def build_shape_config(arch: str, token_ids: dict[str, int], **overrides: Any) -> Any:
    """The transformers config of a random-weight shape; ``overrides`` shrink it for tests.

    ``token_ids`` holds the tokenizer's ids of <|endoftext|> and <|im_end|> (Qwen3.5 also
    its vision placeholders), which the config points at.
    """
    import transformers as tf

    family, fields = SHAPES[arch]
    ids = {
        "bos_token_id": token_ids["<|endoftext|>"],
        "eos_token_id": token_ids["<|im_end|>"],
        "pad_token_id": token_ids["<|endoftext|>"],
    }
    text = {**fields, **ids, **overrides}
    if family == "qwen2":
        return tf.Qwen2Config(**text)
    if family == "qwen3":
        return tf.Qwen3Config(**text)
    if family == "qwen3_moe":
        return tf.Qwen3MoeConfig(**text)
    text_config = tf.Qwen3_5TextConfig(**text)
    media = {
        "vision_start_token_id": token_ids["<|vision_start|>"],
        "vision_end_token_id": token_ids["<|vision_end|>"],
        "image_token_id": token_ids["<|image_pad|>"],
        "video_token_id": token_ids["<|video_pad|>"],
    }
    vision = {**TINY_VISION, "out_hidden_size": text_config.hidden_size}
    return tf.Qwen3_5Config(text_config=text_config.to_dict(), vision_config=vision, **media)


def instantiate(config: Any) -> Any:
    """Random weights of ``config`` on the current torch device (Qwen3.5: multimodal)."""
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText

    if config.model_type == "qwen3_5":
        return AutoModelForImageTextToText.from_config(config)
    return AutoModelForCausalLM.from_config(config)


def build_model(arch: str, path: Path, *, vocab_size: int = QWEN_VOCAB) -> Path:
    """The tiny model at ``vocab_size`` rows, or random bf16 weights in a real shape (CUDA)."""
    if arch == "tiny":
        return ensure_tiny_qwen(path, TinyModelSpec(model_vocab_size=vocab_size))
    if (path / "config.json").exists():
        return path
    import torch
    from transformers import AutoTokenizer

    family = SHAPES[arch][0]
    path.mkdir(parents=True, exist_ok=True)
    build_tokenizer(path, vocab_size=TinyModelSpec().vocab_size, arch=family)
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    token_ids = {t: tokenizer.convert_tokens_to_ids(t) for t in tokenizer.get_vocab()}
    config = build_shape_config(arch, token_ids)
    torch.set_default_dtype(torch.bfloat16)  # 8B: 16 GB built on the GPU, not 32 GB
    try:
        with torch.device("cuda"):
            model = instantiate(config)
    finally:
        torch.set_default_dtype(torch.float32)
    model.to(torch.bfloat16).save_pretrained(str(path))
    return path


def run_measured(command: list[str], log: Path) -> tuple[float, int]:
    """Run a child process; (seconds, its peak RSS in bytes)."""
    start = time.perf_counter()
    with log.open("w") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
        _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"{' '.join(command[:4])} failed; see {log}:\n{log.read_text()[-3000:]}")
    return time.perf_counter() - start, usage.ru_maxrss * 1024


def qwenft_config(args: argparse.Namespace, model: Path, data: Path, out: Path) -> dict[str, Any]:
    zero = args.deepspeed_zero
    return {
        "model": {"name_or_path": str(model)},
        "data": {"path": str(data)},
        "method": args.method,
        **({"deepspeed": {"enabled": True, "zero_stage": zero}} if zero else {}),
        "lora": {"r": args.lora_r, "alpha": 2 * args.lora_r, "dropout": 0.05},
        "training": {
            "epochs": 1,
            "per_device_batch_size": args.rows_per_batch,
            "gradient_accumulation_steps": args.grad_accum,
            "learning_rate": args.learning_rate,
            "max_seq_length": args.max_seq_length,
            "precision": "bf16" if args.device == "cuda" else "fp32",
            "gradient_checkpointing": args.gradient_checkpointing,
            "packing": True,
            "seed": args.seed,
        },
        "checkpoint": {"save_steps": 1_000_000},
        "output_dir": str(out),
        "run_name": "bench",
        "metrics_port": 0,
        "termination_log": str(out / "termination-log"),
    }


def useful_share(config_path: Path, *, cuda: bool) -> tuple[int, int]:
    """(real, computed) tokens of the batches qwenft's own dataset and collator produce.

    On CUDA the attention kernel may pad every row to max_seq_length (flex_attention).
    """
    from qwenft_trainer.attention import row_length
    from qwenft_trainer.config import load_config
    from qwenft_trainer.modeling import choose_attention, load_tokenizer
    from qwenft_trainer.packing_mode import build_collator
    from qwenft_trainer.train import build_datasets

    config = load_config(config_path)
    tokenizer = load_tokenizer(config.model)
    items, _ = build_datasets(config, tokenizer)
    kernel = choose_attention(config, cuda=cuda).implementation
    rows = row_length(kernel, config.training.max_seq_length)
    collate = build_collator(config, tokenizer, row_length=rows)
    random.Random(config.training.seed).shuffle(items)
    size = config.training.per_device_batch_size
    real = sum(len(item["input_ids"]) for item in items)
    computed = sum(
        collate(items[i : i + size])["input_ids"].numel() for i in range(0, len(items), size)
    )
    return real, computed


def find_adapter(out: Path) -> Path:
    found = [p.parent for p in out.rglob("adapter_config.json") if "checkpoint-" not in str(p)]
    if not found:
        sys.exit(f"no adapter saved under {out}")
    return found[0]


def eval_loss(model_dir: Path, adapter: Path, data: Path, max_len: int, device: str) -> float:
    """Mean loss per assistant token on held-out dialogues, the same way for both arms."""
    import torch
    from peft import PeftModel
    from qwenft_trainer.data import tokenize_all
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    base = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=dtype).to(device)
    model = PeftModel.from_pretrained(base, str(adapter)).eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for sample in tokenize_all(load_conversations(data), tokenizer, max_len):
            ids = torch.tensor([sample.input_ids], device=device)
            labels = torch.tensor([sample.labels], device=device)
            n = int((labels[:, 1:] != -100).sum())
            total += float(model(input_ids=ids, labels=labels).loss) * n
            count += n
    return total / count


def text_config(config: dict[str, Any]) -> dict[str, Any]:
    """The language model's fields of a config.json (Qwen3.5 nests them in text_config)."""
    nested: dict[str, Any] | None = config.get("text_config")
    return nested if nested else config


def matmul_weights(config: dict[str, Any], *, active: bool = True) -> int:
    """Weights a token is multiplied with: every projection and the output head, not the
    input embedding (a lookup), norms, biases or Qwen3.5's depthwise convolution.

    MoE layers count the router and, with ``active``, only the experts a token is routed to
    (num_experts_per_tok of num_experts); ``active=False`` counts every expert.
    """
    c = text_config(config)
    h, layers = c["hidden_size"], c["num_hidden_layers"]
    heads, kv = c["num_attention_heads"], c["num_key_value_heads"]
    d = c.get("head_dim") or h // heads
    # Qwen3.5's attention gates its output: q_proj makes queries and gates (2 x heads x d).
    gated = 2 if c.get("model_type") == "qwen3_5_text" else 1
    full = h * heads * d * gated + 2 * h * kv * d + heads * d * h
    linear = 0
    if "linear_num_value_heads" in c:  # Gated DeltaNet: in_proj_qkv, _z, _b, _a, out_proj
        keys = c["linear_num_key_heads"] * c["linear_key_head_dim"]
        values = c["linear_num_value_heads"] * c["linear_value_head_dim"]
        linear = (
            h * (2 * keys + values) + h * values + 2 * h * c["linear_num_value_heads"] + values * h
        )
    # transformers 5 writes num_experts as num_local_experts in config.json.
    total = c.get("num_experts") or c.get("num_local_experts")
    if total:
        experts = c["num_experts_per_tok"] if active else total
        mlp = experts * 3 * h * c["moe_intermediate_size"] + h * total
    else:
        mlp = 3 * h * c["intermediate_size"]
    kinds = c.get("layer_types") or ["full_attention"] * layers
    mixers = sum(full if kind == "full_attention" else linear for kind in kinds)
    return mixers + layers * mlp + c["vocab_size"] * h


def flops_per_token(config: dict[str, Any], context: float) -> float:
    """Training FLOPs per token, PaLM's convention (Chowdhery et al. 2022, appendix B):
    6·N, N = matmul_weights (active experts only), plus 12·L·H·Q·T for attention over
    T tokens, L the full-attention layers, H·Q heads x head_dim. Frozen weights count
    like trained ones, as in PaLM; linear-attention layers add no T term."""
    c = text_config(config)
    heads = c["num_attention_heads"]
    d = c.get("head_dim") or c["hidden_size"] // heads
    kinds = c.get("layer_types") or ["full_attention"] * c["num_hidden_layers"]
    attention_layers = sum(kind == "full_attention" for kind in kinds)
    return float(6 * matmul_weights(config) + 12 * attention_layers * heads * d * context)


MFU_CONVENTION = (
    "MFU: PaLM appendix B, 6·N + 12·L·H·Q·T FLOPs per real token (N: projection and "
    "output-head weights a token passes, MoE routed experts only, frozen weights counted as "
    "trained; L: full-attention layers; H·Q: heads x head_dim; T: mean dialogue length), "
    "over the GPU's dense bf16 peak"
)


def mfu(model_dir: Path, tokens_per_s: float, context: float) -> float | None:
    """Model FLOPs utilisation of the real tokens, against the GPU's dense bf16 peak."""
    import torch

    name = torch.cuda.get_device_name()
    peak = next((v for k, v in PEAK_BF16.items() if k in name), None)
    if peak is None:
        return None
    config = json.loads((model_dir / "config.json").read_text())
    return flops_per_token(config, context) * tokens_per_s / peak


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-arch", choices=["tiny", *SHAPES], default="tiny")
    parser.add_argument(
        "--method", choices=["lora", "qlora"], default="lora", help="qlora: 4-bit NF4 base"
    )
    parser.add_argument(
        "--arms",
        default=",".join(ARMS),
        help=f"comma-separated arms to run, of {', '.join(ARMS)} (qwenft always runs)",
    )
    parser.add_argument(
        "--deepspeed-zero",
        type=int,
        choices=[0, 2],
        default=0,
        help="qwenft arm: DeepSpeed ZeRO stage, under torchrun on one process (NCCL on CUDA)",
    )
    parser.add_argument("--no-eval", action="store_true", help="skip the held-out loss")
    parser.add_argument(
        "--vocab-size", type=int, default=QWEN_VOCAB, help="tiny model: embedding rows"
    )
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--samples", type=int, default=80, help="training dialogues")
    parser.add_argument("--eval-samples", type=int, default=32)
    parser.add_argument(
        "--max-seq-length", type=int, default=2048, help="qwenft and TRL: tokens per packed row"
    )
    parser.add_argument(
        "--baseline-max-seq-length", type=int, default=512, help="Qwen recipe: finetune.py's 512"
    )
    parser.add_argument("--rows-per-batch", type=int, default=1, help="qwenft, TRL: packed rows")
    parser.add_argument("--baseline-batch-size", type=int, default=4, help="padded samples")
    parser.add_argument("--grad-accum", type=int, default=1)
    parser.add_argument("--gradient-checkpointing", action="store_true", help="every arm")
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--lora-r", type=int, default=8)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/qwenft-bench"))
    parser.add_argument(
        "--model-dir", type=Path, help="where models are built and reused (default: workdir)"
    )
    args = parser.parse_args(argv)
    arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    unknown = sorted(set(arms) - set(ARMS))
    if unknown:
        parser.error(f"--arms: unknown arm(s) {', '.join(unknown)}; choose from {', '.join(ARMS)}")
    args.arms = [arm for arm in ARMS if arm in arms or arm == "qwenft"]
    if args.method == "qlora" and "recipe" in args.arms:
        parser.error("--method qlora: the Qwen recipe arm trains LoRA only; pass --arms qwenft,trl")
    if args.method == "qlora" and args.device != "cuda":
        parser.error("--method qlora needs --device cuda (bitsandbytes 4-bit)")
    return args


def run_qwenft(args: argparse.Namespace, model: Path, train: Path, out: Path) -> dict[str, Any]:
    config_path = out / "train.yaml"
    config_path.write_text(yaml.safe_dump(qwenft_config(args, model, train, out)))
    print(f"qwenft: training {args.samples} dialogues (packing on) ...", flush=True)
    launcher = [sys.executable, "-m", "qwenft_trainer.train", "--config", str(config_path)]
    if args.deepspeed_zero:  # as the trainer's pods run it: torchrun, one rank here
        launcher = [
            sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "1",
            "--master-port", str(free_port()), *launcher[1:],
        ]  # fmt: skip
    seconds, rss = run_measured(launcher, out.parent / "qwenft.log")
    summary: dict[str, Any] = json.loads((out / "summary.json").read_text())
    real, computed = useful_share(config_path, cuda=args.device == "cuda")
    return {**summary, "process_seconds": seconds, "rss": rss, "real": real, "computed": computed}


def run_trl(args: argparse.Namespace, model: Path, train: Path, out: Path) -> dict[str, Any]:
    print("trl: SFTTrainer, packing on (bfd) ...", flush=True)
    seconds, rss = run_measured(
        [sys.executable, str(ROOT / "bench" / "trl_sft_baseline.py"),
         "--model", str(model), "--data", str(train), "--output", str(out),
         "--max-seq-length", str(args.max_seq_length), "--batch-size", str(args.rows_per_batch),
         "--grad-accum", str(args.grad_accum), "--learning-rate", str(args.learning_rate),
         "--lora-r", str(args.lora_r), "--lora-alpha", str(2 * args.lora_r),
         "--precision", "bf16" if args.device == "cuda" else "fp32", "--seed", str(args.seed),
         *(["--gradient-checkpointing"] if args.gradient_checkpointing else []),
         *(["--load-in-4bit"] if args.method == "qlora" else [])],
        out.parent / "trl.log",
    )  # fmt: skip
    result: dict[str, Any] = json.loads((out / "result.json").read_text())
    return {**result, "process_seconds": seconds, "rss": rss}


def run_recipe(args: argparse.Namespace, model: Path, train: Path, out: Path) -> dict[str, Any]:
    print("baseline: Qwen finetune.py recipe (padding to max length) ...", flush=True)
    seconds, rss = run_measured(
        [sys.executable, str(ROOT / "bench" / "qwen_finetune_baseline.py"),
         "--model", str(model), "--data", str(train), "--output", str(out),
         "--max-seq-length", str(args.baseline_max_seq_length),
         "--batch-size", str(args.baseline_batch_size), "--grad-accum", str(args.grad_accum),
         "--learning-rate", str(args.learning_rate), "--lora-r", str(args.lora_r),
         "--lora-alpha", str(2 * args.lora_r),
         "--precision", "bf16" if args.device == "cuda" else "fp32", "--seed", str(args.seed),
         *(["--gradient-checkpointing"] if args.gradient_checkpointing else [])],
        out.parent / "baseline.log",
    )  # fmt: skip
    result: dict[str, Any] = json.loads((out / "result.json").read_text())
    return {**result, "process_seconds": seconds, "rss": rss}


def build_rows(
    args: argparse.Namespace,
    model: Path,
    arms: dict[str, dict[str, Any]],
    losses: dict[str, float | None],
    trained: int,
) -> dict[str, list[Any]]:
    """metric -> [qwenft, TRL, Qwen recipe] values; None for an arm that did not run.

    ``trained`` is the assistant tokens of the training dialogues, the same in every arm
    (one epoch of the same data).
    """
    ours = arms["qwenft"]
    trl, base = arms.get("trl"), arms.get("recipe")
    runs = [ours, trl, base]

    def each(key: str) -> list[Any]:
        return [arm[key] if arm else None for arm in runs]

    per_second = [trained / arm["wall_seconds"] if arm else None for arm in runs]
    rows: dict[str, list[Any]] = {
        "trained tokens/s": per_second,
        "useful-token share": [
            ours["real"] / ours["computed"],
            None,
            base["real_tokens"] / base["computed_tokens"] if base else None,
        ],
        "computed tokens": [ours["computed"], None, base["computed_tokens"] if base else None],
        "optimizer steps": each("steps"),
        "training seconds": each("wall_seconds"),
        "process seconds": each("process_seconds"),
        "held-out loss": [losses.get(arm) for arm in ARMS],
    }
    if args.device == "cuda":
        rows["peak GPU memory GiB"] = [
            arm["peak_gpu_memory_bytes"] / 2**30 if arm else None for arm in runs
        ]
        # PaLM counts attention over the sequence length T: here the average dialogue.
        context = ours["real"] / max(1, args.samples)
        rows["MFU"] = [mfu(model, rate, context) if rate else None for rate in per_second]
    else:
        rows["peak RSS MiB"] = [arm["rss"] / 2**20 if arm else None for arm in runs]
    return rows


def estimate_rows(config: dict[str, Any], model: Path) -> dict[str, list[Any]]:
    """The GPU-fit estimate of the qwenft arm (qwenft_trainer.fit_estimate), on one GPU.

    ``allocated`` leaves out the fixed overhead (CUDA context, allocator reserve), which
    torch.cuda.max_memory_allocated does not see: it is the number to set beside the peak.
    """
    from qwenft_trainer.config import TrainConfig
    from qwenft_trainer.fit_estimate import estimate_memory

    shape = json.loads((model / "config.json").read_text())
    estimate = estimate_memory(shape, TrainConfig.model_validate(config), gpus=1)
    allocated = estimate.total - estimate.parts["overhead"]
    return {
        "estimated GPU memory GiB (allocated)": [allocated / 2**30, None, None],
        "estimated GPU memory GiB (with overhead)": [estimate.total / 2**30, None, None],
    }


def memory_row(rows: dict[str, list[Any]]) -> str:
    return "peak GPU memory GiB" if "peak GPU memory GiB" in rows else "peak RSS MiB"


def check_goals(
    rows: dict[str, list[Any]], *, peak_limit_gib: float | None = None
) -> list[tuple[str, bool]]:
    """(goal, met) for every goal whose arms ran; ``peak_limit_gib``: qwenft's memory cap."""
    speed = rows["trained tokens/s"]
    memory = rows[memory_row(rows)]
    loss = rows["held-out loss"]
    share = rows["useful-token share"][0]
    goals: list[tuple[str, bool]] = []
    if speed[1] is not None:
        goals.append(
            (f"trained tokens/s >= 2x TRL's ({speed[0] / speed[1]:.2f}x)", speed[0] >= 2 * speed[1])
        )
        goals.append(
            (
                f"peak memory <= 0.6x TRL's ({memory[0] / memory[1]:.2f}x)",
                memory[0] <= 0.6 * memory[1],
            )
        )
        if loss[0] is not None and loss[1] is not None:
            goals.append(
                (
                    f"held-out loss no worse than TRL's ({loss[0]:.4f} vs {loss[1]:.4f}, "
                    f"<= {1 + LOSS_SLACK:g}x)",
                    loss[0] <= loss[1] * (1 + LOSS_SLACK),
                )
            )
    if speed[2] is not None:
        goals.append(
            (
                f"speed-up >= 1.5x the Qwen recipe ({speed[0] / speed[2]:.2f}x)",
                speed[0] >= 1.5 * speed[2],
            )
        )
    goals.append((f"useful-token share >= 0.95 ({share:.3f})", share >= 0.95))
    if peak_limit_gib is not None:
        goals.append(
            (
                f"peak GPU memory < {peak_limit_gib:g} GiB ({memory[0]:.2f} GiB)",
                memory[0] < peak_limit_gib,
            )
        )
    return goals


def print_table(rows: dict[str, list[Any]]) -> None:
    def cell(value: Any) -> str:
        if value is None:
            return "-"
        return f"{value:,.3f}" if isinstance(value, float) else f"{value:,}"

    def ratio(a: Any, b: Any) -> str:
        ok = isinstance(a, int | float) and isinstance(b, int | float) and b
        return f"{a / b:.2f}x" if ok else "-"

    print(f"| {'metric':<20} | {'qwenft':>12} | {'TRL':>12} | {'Qwen recipe':>12} "
          f"| {'qwenft/TRL':>10} | {'recipe/TRL':>10} |")  # fmt: skip
    print(f"|{'-' * 22}|{'-' * 14}|{'-' * 14}|{'-' * 14}|{'-' * 12}|{'-' * 12}|")
    for name, (a, t, b) in rows.items():
        print(f"| {name:<20} | {cell(a):>12} | {cell(t):>12} | {cell(b):>12} "
              f"| {ratio(a, t):>10} | {ratio(b, t):>10} |")  # fmt: skip


def assistant_tokens(model: Path, data: Path, max_len: int) -> int:
    """Tokens with a label in the training dialogues: what every arm trains on."""
    from qwenft_trainer.data import tokenize_all
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model))
    return sum(s.trained_tokens for s in tokenize_all(load_conversations(data), tokenizer, max_len))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.device == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    work = args.workdir
    work.mkdir(parents=True, exist_ok=True)
    name = f"model-{args.model_arch}" + (
        f"-v{args.vocab_size}" if args.model_arch == "tiny" else ""
    )
    print(f"building {args.model_arch} ...", flush=True)
    model = build_model(
        args.model_arch, (args.model_dir or work) / name, vocab_size=args.vocab_size
    )
    records = build_dialogues(args.samples + args.eval_samples, args.seed)
    train = write_jsonl(work / "train.jsonl", records[: args.samples])
    held_out = write_jsonl(work / "eval.jsonl", records[args.samples :])

    runners = {"qwenft": run_qwenft, "trl": run_trl, "recipe": run_recipe}
    outs = {arm: work / arm for arm in args.arms}
    for path in outs.values():
        subprocess.run(["rm", "-rf", str(path)], check=True)
        path.mkdir(parents=True)
    arms = {arm: runners[arm](args, model, train, out) for arm, out in outs.items()}
    losses: dict[str, float | None] = {}
    if not args.no_eval:
        print("evaluating the adapters on held-out dialogues ...", flush=True)
        length = max(args.max_seq_length, args.baseline_max_seq_length)
        losses = {
            arm: eval_loss(model, find_adapter(out), held_out, length, args.device)
            for arm, out in outs.items()
        }
    trained = assistant_tokens(model, train, args.max_seq_length)
    rows = build_rows(args, model, arms, losses, trained)
    if args.device == "cuda":
        rows.update(estimate_rows(qwenft_config(args, model, train, outs["qwenft"]), model))
    recipe_tokens = arms["recipe"]["trained_tokens"] if "recipe" in arms else trained
    if recipe_tokens != trained:
        print(f"warning: the recipe's {args.baseline_max_seq_length}-token truncation trains "
              f"{recipe_tokens:,} tokens, the packed arms {trained:,}")  # fmt: skip
    vocab = text_config(json.loads((model / "config.json").read_text())).get("vocab_size")
    zero = f", ZeRO-{args.deepspeed_zero} under torchrun" if args.deepspeed_zero else ""
    print(f"\n{args.model_arch} (vocabulary {vocab:,}) {args.method}{zero} on {args.device}, "
          f"{args.samples} dialogues, {trained:,} trained tokens each; qwenft / TRL: "
          f"{args.rows_per_batch} x {args.max_seq_length}-token packed rows, recipe: "
          f"{args.baseline_batch_size} x {args.baseline_max_seq_length} padded; "
          f"{args.grad_accum} accumulation; qwenft loss path: "
          f"{arms['qwenft'].get('loss_path', '?')}\n")  # fmt: skip
    print_table(rows)
    if args.device == "cuda":
        print(f"\n{MFU_CONVENTION}.")
    (work / "results.json").write_text(
        json.dumps({"arch": args.model_arch, "method": args.method, "rows": rows}, indent=2) + "\n"
    )
    qlora_8b = args.method == "qlora" and args.model_arch == "qwen3-8b"
    goals = check_goals(rows, peak_limit_gib=QLORA_PEAK_GIB if qlora_8b else None)
    print()
    for goal, met in goals:
        print(f"goal {'met' if met else 'NOT met'}: {goal}")
    missed = [goal for goal, met in goals if not met]
    if missed:
        print(f"\n{len(missed)} goal(s) not met: " + "; ".join(missed))
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
