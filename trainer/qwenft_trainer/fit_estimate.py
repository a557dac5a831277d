"""The GPU memory a training run needs on each GPU, estimated before any GPU is taken.

A run that can't fit its GPUs otherwise fails with a CUDA out-of-memory error minutes after
its pods were scheduled, the model downloaded and loaded. The operator compares this
estimate with the memory of the GPUs the run targets while it validates, so such a run
fails first, with the numbers and the changes that would make it fit. Pure arithmetic on
the model's shape (:mod:`qwenft_trainer.model_shapes`) and the TrainConfig; no torch.

Per GPU, in bytes:

- weights: the base model in the training precision; Q-LoRA: NF4 (0.5 B per parameter plus
  its blocks' constants, double-quantized or not) for the decoder's linear layers, what
  stays unquantized upcast to fp32 (peft's ``prepare_model_for_kbit_training``), or a
  GPTQ/AWQ base's own packing (bits and group size from ``quantization_config``); a full
  fine-tune holds fp32 master weights (bf16 ones under DeepSpeed). MoE: every expert.
  ZeRO-3: a 1/N share plus two gathered layers.
- adapter: the LoRA A/B matrices of the targeted modules and expert tensors (fp32); the
  count equals the adapter the trainer builds (tests compare on every architecture).
- gradients: fp32 gradients of what trains; ZeRO-2/3 keep a 1/N share; DDP over several
  GPUs adds its buckets.
- optimizer: AdamW's two moments (and the fp32 master copy under DeepSpeed); ZeRO-2/3 a 1/N
  share; nothing on the GPU when offloaded.
- activations: per token of ``per_device_batch_size x max_seq_length`` (packed rows are
  full): with gradient checkpointing each layer's input plus one layer recomputed (and its
  gradients), without it every layer's saved tensors. A memory-efficient attention kernel
  (no sequence-squared term) is assumed.
- logits: with ``training.kernels: none`` the full ``tokens x vocab`` logits, their fp32
  copy and gradient (10 B each); with the fused or chunked loss one chunk.
- overhead: CUDA context, library workspaces and allocator reserve (2 GiB), the allocator's
  fragmentation (10 % of activations and logits), communication buffers across GPUs.

GPTQ/AWQ kernels that train dequantize each linear weight for the matmul, and autograd keeps
that fp16 copy for the backward pass: one layer's worth with checkpointing, every layer's
without (bitsandbytes keeps only the 4-bit state). The two overhead constants are the only
numbers set against measurements (Qwen's published fine-tuning memory, docs/gpu-fit.md);
every other term is counted from the shapes.

    estimate = estimate_memory(json.load(open("config.json")), load_config("run.yaml"), gpus=4)
    print(estimate.render())

It is over 300 lines because each part of the estimate (weights by precision, adapter,
optimizer, activations, logits, ZeRO partitioning) is a small counted formula, and the
verdict and its fixes are derived from all of them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from qwenft_trainer.config import TrainConfig
from qwenft_trainer.model_shapes import (
    FULL_ATTENTION,
    LINEAR_ATTENTION,
    ModelShape,
    Weight,
)
from qwenft_trainer.targets import default_targets

GIB = 2**30
PRECISION_BYTES = {"bf16": 2, "fp16": 2, "fp32": 4}
# bitsandbytes 4-bit: one absmax per block of 64 weights, fp32, or (double quant) 8-bit
# with one fp32 constant per 256 blocks.
NF4_BLOCK = 64
NF4_SECOND_BLOCK = 256
# The chunked cross-entropy's chunk (qwenft_trainer.chunked_loss.CHUNK_BYTES) and how many
# chunk-sized buffers the loss holds at once (logits, their gradient, the softmax).
LOSS_CHUNK_BYTES = 64 * 2**20
LOSS_CHUNK_BUFFERS = 3
# Full logits: bf16 logits, their fp32 upcast for the loss, and the fp32 gradient.
LOGIT_BYTES = 2 + 4 + 4
# CUDA context, cuBLAS/cuDNN workspaces and the caching allocator's reserve.
FIXED_OVERHEAD = 2 * GIB
# The caching allocator's fragmentation over the transient tensors (activations, logits).
TRANSIENT_RESERVE = 0.1
# NCCL communicators and buffers of a run over several GPUs.
COMMUNICATION_OVERHEAD = int(0.5 * GIB)
# DeepSpeed ZeRO-2's all-gather bucket (deepspeed_config.build_zero_config), in elements.
ZERO2_ALLGATHER_BUCKET = int(5e8)
# Qwen1's own fine-tuning script adapts these (Qwen/Qwen finetune.py).
QWEN1_TARGETS = ("c_attn", "c_proj", "w1", "w2")
# Share of the GPU's memory above which a run that fits is called tight.
TIGHT_SHARE = 0.9
PARTS = ("weights", "adapter", "gradients", "optimizer", "activations", "logits", "overhead")


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes per GPU, by part, of one run on ``gpus`` GPUs."""

    model: str
    gpus: int
    tokens: int  # per micro-batch on one GPU
    parts: dict[str, int]
    notes: tuple[str, ...] = ()
    trainable: int = 0

    @property
    def total(self) -> int:
        return sum(self.parts.values())

    def summary(self) -> str:
        """``18.6 GiB per GPU (weights 14.4, adapter 0.5, ...)`` for a condition message."""
        parts = ", ".join(f"{name} {gib(value)}" for name, value in self.parts.items() if value)
        return f"{gib(self.total)} GiB per GPU ({parts} GiB)"

    def render(self) -> str:
        """The breakdown as a table."""
        lines = [
            f"GPU memory estimate: {self.model}",
            f"  {self.gpus} GPU(s), {self.tokens:,} tokens per micro-batch, "
            f"{self.trainable:,} trainable parameters",
            f"  {'part':<12} {'GiB':>9}",
        ]
        lines += [f"  {name:<12} {gib(value):>9}" for name, value in self.parts.items()]
        lines.append(f"  {'total':<12} {gib(self.total):>9}  per GPU")
        lines += [f"  note: {note}" for note in self.notes]
        return "\n".join(lines)


def gib(value: float) -> str:
    return f"{value / GIB:.1f}"


@dataclass
class _Tally:
    parts: dict[str, float] = field(default_factory=lambda: dict.fromkeys(PARTS, 0.0))
    notes: list[str] = field(default_factory=list)


def estimate_memory(
    model_config: dict[str, Any] | ModelShape, train: TrainConfig, gpus: int
) -> MemoryEstimate:
    """The memory each of ``gpus`` GPUs needs to train ``train`` on the model of
    ``model_config`` (a ``config.json`` dict or its shape)."""
    if gpus < 1:
        raise ValueError(f"gpus must be at least 1, not {gpus}")
    shape = (
        model_config
        if isinstance(model_config, ModelShape)
        else ModelShape.from_config(model_config)
    )
    weights = shape.weights()
    adapted = _adapted(shape, weights, train)
    tally = _Tally()
    trainable = _states(tally, shape, weights, adapted, train, gpus)
    tokens = train.training.per_device_batch_size * train.training.max_seq_length
    _activations(tally, shape, adapted, train, tokens)
    _logits(tally, shape, train, tokens)
    transient = tally.parts["activations"] + tally.parts["logits"]
    tally.parts["overhead"] += FIXED_OVERHEAD + TRANSIENT_RESERVE * transient
    if gpus > 1:
        tally.parts["overhead"] += COMMUNICATION_OVERHEAD
    return MemoryEstimate(
        model=shape.describe(),
        gpus=gpus,
        tokens=tokens,
        parts={name: int(value) for name, value in tally.parts.items()},
        notes=tuple(tally.notes),
        trainable=trainable,
    )


def _matches(name: str, targets: tuple[str, ...] | list[str]) -> bool:
    return any(name == t or name.endswith("." + t) or name == t + ".weight" for t in targets)


@dataclass(frozen=True)
class _Adapted:
    """The weights LoRA adapts, and the ones trained in full (``modules_to_save``)."""

    weights: tuple[Weight, ...]
    saved: tuple[Weight, ...]
    dropout: float


def _adapted(shape: ModelShape, weights: list[Weight], train: TrainConfig) -> _Adapted:
    if train.method == "full":
        return _Adapted((), (), 0.0)
    lora = train.lora
    if shape.model_type == "qwen":
        defaults_modules: tuple[str, ...] = QWEN1_TARGETS
        defaults_parameters: tuple[str, ...] = ()
    else:
        found = default_targets(shape.model_type)
        defaults_modules, defaults_parameters = found.modules, found.parameters
    modules = tuple(lora.target_modules or defaults_modules)
    parameters = tuple(
        defaults_parameters if lora.target_parameters is None else lora.target_parameters
    )
    chosen = tuple(
        w
        for w in weights
        if w.linear
        and (
            (w.experts and _matches(w.name, parameters))
            or (not w.experts and _matches(w.name, modules))
        )
    )
    saved = tuple(w for w in weights if _matches(w.name, lora.modules_to_save))
    experts = any(w.experts for w in chosen)
    dropout = lora.dropout if lora.dropout is not None else (0.0 if experts else 0.05)
    return _Adapted(chosen, saved, dropout)


def _weight_bytes(shape: ModelShape, weight: Weight, train: TrainConfig) -> float:
    """Bytes of one weight of the frozen base (the whole model, for a full fine-tune)."""
    precision = PRECISION_BYTES[train.training.precision]
    if train.method == "full":
        return weight.total * (2 if train.deepspeed.enabled else 4)
    if train.method != "qlora":
        return weight.total * precision
    packed = weight.linear and weight.name not in ("lm_head", "mlp.gate")
    found = shape.quantization
    if found is not None and found.trainable:  # GPTQ / AWQ: its own packing, fp16 rest
        if not packed:
            return weight.total * 2
        bits, group = found.bits or 4, found.group_size or 128
        per_group = 2 + bits / 8  # an fp16 scale and a packed zero point per group
        return weight.total * (bits / 8 + per_group / group)
    if not packed or weight.experts:
        # bitsandbytes reaches nn.Linear only (fused expert tensors stay as they are), and
        # prepare_model_for_kbit_training upcasts what is not 4-bit to fp32.
        return weight.total * 4
    assert train.quantization is not None  # TrainConfig defaults it for qlora
    constants = (1 + 4 / NF4_SECOND_BLOCK) if train.quantization.double_quant else 4
    return weight.total * (0.5 + constants / NF4_BLOCK)


def _states(
    tally: _Tally,
    shape: ModelShape,
    weights: list[Weight],
    adapted: _Adapted,
    train: TrainConfig,
    gpus: int,
) -> int:
    """Weights, adapter, gradients and optimizer; returns the trainable parameter count."""
    ds = train.deepspeed
    stage = ds.zero_stage if ds.enabled else 0
    share = 1 / gpus if stage >= 2 else 1.0
    base = sum(_weight_bytes(shape, w, train) for w in weights)
    if train.method == "full":
        trainable = sum(w.total for w in weights if w.name != "visual")
    else:
        rank = train.lora.r
        lora = sum(
            rank * (w.in_features + w.out_features) * max(1, w.experts) * w.copies
            for w in adapted.weights
        )
        trainable = lora + sum(w.total for w in adapted.saved)
        tally.parts["adapter"] += lora * 4
    if stage == 3:
        gathered = 2 * base / max(1, shape.layers)  # two layers' weights, all-gathered
        base = gathered if ds.offload_parameters else base / gpus + gathered
        tally.parts["adapter"] /= gpus
        tally.notes.append(f"ZeRO-3 over {gpus} GPUs: weights sharded, two layers gathered")
    tally.parts["weights"] += base
    tally.parts["gradients"] += trainable * 4 * share
    if not ds.enabled and gpus > 1:
        tally.parts["gradients"] += trainable * 4  # DDP's gradient buckets
    if stage == 2:
        tally.parts["overhead"] += min(ZERO2_ALLGATHER_BUCKET, trainable) * 2
    optimizer = 12 if train.method == "full" and ds.enabled else 8
    if train.method != "full":
        optimizer += 4 if ds.enabled else 0  # DeepSpeed's fp32 master copy of the adapter
    if ds.enabled and ds.offload_optimizer:
        tally.notes.append("optimizer states offloaded to CPU memory")
    else:
        tally.parts["optimizer"] += trainable * optimizer * share
    return trainable


def _layer_activations(shape: ModelShape, kind: str, moe: bool, adapted: _Adapted) -> float:
    """Elements per token one layer saves for its backward pass."""
    h = shape.hidden
    if kind == LINEAR_ATTENTION and shape.linear_attention is not None:
        la = shape.linear_attention
        conv = 2 * la.keys + la.values
        mixer = 2 * h + (conv + la.values + 2 * la.value_heads) + 2 * conv + 3 * la.values
    else:
        q, kv = shape.heads * shape.head_dim, shape.kv_heads * shape.head_dim
        gate = q if shape.gated_attention else 0
        mixer = (
            2 * h
            + (q + gate + 2 * kv)
            + (q + kv)
            + q
            + (q + kv if shape.model_type != "qwen2" else 0)
        )
    if moe:
        k, m = shape.experts_per_token, shape.moe_intermediate
        mlp = 2 * h + 2 * shape.experts + k * (h + 4 * m)
        if shape.shared_intermediate:
            mlp += 4 * shape.shared_intermediate + h
    else:
        mlp = 2 * h + 4 * shape.intermediate
    extra = 0.0
    if adapted.dropout > 0:  # each adapted module keeps its dropped-out input and the mask
        extra = 1.5 * sum(w.in_features for w in adapted.weights if not w.experts)
        extra /= max(1, shape.layers)
    return mixer + mlp + extra


def _activations(
    tally: _Tally, shape: ModelShape, adapted: _Adapted, train: TrainConfig, tokens: int
) -> None:
    element = PRECISION_BYTES[
        train.quantization.compute_dtype
        if train.method == "qlora" and train.quantization
        else train.training.precision
    ]
    layers = []
    for i, kind in enumerate(shape.layer_types):
        moe = bool(shape.moe_layers) and shape.moe_layers[i]
        layers.append(_layer_activations(shape, kind or FULL_ATTENTION, moe, adapted))
    residual = shape.layers * shape.hidden
    checkpointing = train.training.gradient_checkpointing
    per_token = residual + (2 * max(layers) if checkpointing else sum(layers))
    tally.parts["activations"] += per_token * tokens * element
    found = shape.quantization
    if train.method == "qlora" and found is not None and found.trainable:
        # The dequantized fp16 weights autograd keeps for the backward of packed layers.
        packed = sum(
            w.total for w in shape.weights() if w.linear and w.name not in ("lm_head", "mlp.gate")
        )
        held = 2 * packed / max(1, shape.layers) if checkpointing else packed
        tally.parts["activations"] += held * 2


def _logits(tally: _Tally, shape: ModelShape, train: TrainConfig, tokens: int) -> None:
    if train.training.kernels == "none":
        tally.parts["logits"] += tokens * shape.vocab * LOGIT_BYTES
    else:
        tally.parts["logits"] += (
            min(tokens * shape.vocab * 4, LOSS_CHUNK_BYTES) * LOSS_CHUNK_BUFFERS
        )


@dataclass(frozen=True)
class Verdict:
    """How an estimate compares with the memory of one GPU."""

    status: str  # "fits", "tight" or "too-large"
    message: str


def judge(estimate: MemoryEstimate, gpu_memory: int, *, fixes: list[str] | None = None) -> Verdict:
    """``fits`` / ``tight`` (above 90 % of ``gpu_memory``) / ``too-large``, with a message."""
    share = estimate.total / gpu_memory
    where = f"of {gib(gpu_memory)} GiB GPU memory"
    if share > 1:
        text = f"needs {estimate.summary()}, more than the {gib(gpu_memory)} GiB GPU memory"
        if fixes:
            text += "; it would fit with " + "; or ".join(fixes)
        return Verdict("too-large", text)
    status = "tight" if share > TIGHT_SHARE else "fits"
    return Verdict(status, f"needs {estimate.summary()}, {share:.0%} {where}")


def fixes_that_fit(shape: ModelShape, train: TrainConfig, gpus: int, gpu_memory: int) -> list[str]:
    """The single changes (Q-LoRA, checkpointing, fused loss, ZeRO-3 over the run's GPUs,
    shorter sequences) under which the run would fit, each with its estimate."""
    t = train.training
    candidates: list[tuple[str, dict[str, Any]]] = []
    if train.method == "lora" and (shape.quantization is None):
        candidates.append(("method: qlora", {"method": "qlora", "quantization": {}}))
    if not t.gradient_checkpointing:
        candidates.append(
            ("training.gradientCheckpointing: true", {"training": {"gradient_checkpointing": True}})
        )
    if t.kernels == "none":
        candidates.append(("training.kernels: auto", {"training": {"kernels": "auto"}}))
    zero3 = train.deepspeed.enabled and train.deepspeed.zero_stage == 3
    if gpus > 1 and not zero3 and train.method != "qlora":
        zero3_change = {"deepspeed": {"enabled": True, "zero_stage": 3}}
        candidates.append(("deepspeed ZeRO-3 over the run's GPUs", zero3_change))
    if t.per_device_batch_size > 1:
        candidates.append(
            ("training.perDeviceBatchSize: 1", {"training": {"per_device_batch_size": 1}})
        )
    if t.max_seq_length > 1024:
        half = t.max_seq_length // 2
        candidates.append(
            (f"training.maxSeqLength: {half}", {"training": {"max_seq_length": half}})
        )
    found = []
    base = train.model_dump()
    for label, change in candidates:
        merged = _merge(base, change)
        try:
            changed = TrainConfig.model_validate(merged)
        except ValueError:
            continue
        total = estimate_memory(shape, changed, gpus).total
        if total <= gpu_memory:
            found.append(f"{label} ({gib(total)} GiB)")
    return found


def _merge(base: dict[str, Any], change: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in change.items():
        if isinstance(value, dict) and value and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out
