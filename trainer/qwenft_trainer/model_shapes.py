"""The weights of a Qwen model, counted from its ``config.json`` without loading it.

The GPU-fit estimate (:mod:`qwenft_trainer.fit_estimate`) runs in the operator, which has
no torch, and before any checkpoint is downloaded, so it can't ask a model for its
parameters. This module reads the shape fields of a ``config.json`` (``text_config`` of a
multimodal Qwen3.5 checkpoint) and lists every weight the way transformers builds it: each
linear projection with its input and output width (the ones a LoRA adapter or a 4-bit
quantization can reach), the fused expert tensors of the MoE blocks (all experts are held,
whichever are routed to), and the rest (embeddings, norms, biases, convolution kernels).
Counts match transformers' models exactly for dense Qwen2/Qwen3, Qwen3-MoE, Qwen3-Next and
the Qwen3.5 text stack (the tests build each tiny architecture and compare); the Qwen3.5
vision tower is counted from its own config. Qwen1 (``model_type: qwen``) is covered too,
for comparison with Qwen's published fine-tuning measurements.

``KNOWN_CONFIGS`` holds the shape fields of common hub checkpoints (from their public
``config.json``), so ``qwenft estimate`` works on a manifest without a download.

    shape = ModelShape.from_config(json.loads(Path("config.json").read_text()))
    shape.parameters()  # 7_615_616_512 for Qwen2.5-7B

It is over 300 lines because it holds the parameter count of every Qwen layer kind and the
table of published hub shapes, which must agree.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from qwenft_trainer.quantized import CheckpointQuantization, checkpoint_quantization

FULL_ATTENTION = "full_attention"
LINEAR_ATTENTION = "linear_attention"


class ShapeError(ValueError):
    """A config.json without the fields the estimate needs; the message names them."""


@dataclass(frozen=True)
class Weight:
    """One kind of weight in the model: ``copies`` tensors of ``size`` numbers each.

    ``in_features``/``out_features`` are set for a linear projection (``experts`` > 0 for a
    fused expert tensor holding that many experts' projections).
    """

    name: str
    size: int
    copies: int
    in_features: int = 0
    out_features: int = 0
    experts: int = 0

    @property
    def linear(self) -> bool:
        return self.in_features > 0

    @property
    def total(self) -> int:
        return self.size * self.copies


@dataclass(frozen=True)
class LinearAttention:
    """Gated DeltaNet widths (Qwen3-Next, Qwen3.5)."""

    key_heads: int
    value_heads: int
    key_dim: int
    value_dim: int
    conv_kernel: int

    @property
    def keys(self) -> int:
        return self.key_heads * self.key_dim

    @property
    def values(self) -> int:
        return self.value_heads * self.value_dim


@dataclass(frozen=True)
class ModelShape:
    """The shape fields of a Qwen ``config.json`` that decide its memory."""

    model_type: str
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int  # per branch of the dense SwiGLU MLP
    vocab: int
    tied: bool = False
    experts: int = 0
    experts_per_token: int = 0
    moe_intermediate: int = 0
    shared_intermediate: int = 0
    moe_layers: tuple[bool, ...] = ()
    layer_types: tuple[str, ...] = ()
    linear_attention: LinearAttention | None = None
    quantization: CheckpointQuantization | None = None
    vision_parameters: int = 0

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> ModelShape:
        """The shape of a ``config.json`` (a dict); ShapeError names a missing field."""
        text = config.get("text_config")
        fields: dict[str, Any] = {**config, **text} if isinstance(text, dict) else dict(config)
        model_type = str(config.get("model_type") or fields.get("model_type") or "")
        model_type = model_type.removesuffix("_text")

        def need(key: str) -> int:
            value = fields.get(key)
            if not isinstance(value, int) or value <= 0:
                raise ShapeError(
                    f"config.json has no positive integer '{key}' (model_type "
                    f"'{model_type or 'unset'}'): it can't be sized for the GPU-fit estimate"
                )
            return value

        hidden, layers, heads = (
            need("hidden_size"),
            need("num_hidden_layers"),
            need("num_attention_heads"),
        )
        qwen1 = model_type == "qwen"
        kv_heads = heads if qwen1 else int(fields.get("num_key_value_heads") or heads)
        head_dim = int(fields.get("head_dim") or fields.get("kv_channels") or hidden // heads)
        intermediate = int(fields.get("intermediate_size") or 0)
        if qwen1:
            intermediate //= 2  # Qwen1 counts both SwiGLU branches (w1 and w2)
        experts = int(fields.get("num_experts") or fields.get("num_local_experts") or 0)
        moe_layers: tuple[bool, ...] = ()
        if experts:
            step = int(fields.get("decoder_sparse_step") or 1)
            dense = set(fields.get("mlp_only_layers") or [])
            moe_layers = tuple(i not in dense and (i + 1) % step == 0 for i in range(layers))
        layer_types = tuple(str(t) for t in fields.get("layer_types") or ())
        interval = fields.get("full_attention_interval")
        linear: LinearAttention | None = None
        if "linear_num_value_heads" in fields:
            if not layer_types and isinstance(interval, int) and interval > 0:
                layer_types = tuple(
                    FULL_ATTENTION if (i + 1) % interval == 0 else LINEAR_ATTENTION
                    for i in range(layers)
                )
            linear = LinearAttention(
                key_heads=need("linear_num_key_heads"),
                value_heads=need("linear_num_value_heads"),
                key_dim=need("linear_key_head_dim"),
                value_dim=need("linear_value_head_dim"),
                conv_kernel=int(fields.get("linear_conv_kernel_dim") or 4),
            )
        if not experts and intermediate <= 0:
            need("intermediate_size")
        vision = config.get("vision_config")
        return cls(
            model_type=model_type,
            hidden=hidden,
            layers=layers,
            heads=heads,
            kv_heads=kv_heads,
            head_dim=head_dim,
            intermediate=intermediate,
            vocab=need("vocab_size"),
            tied=bool(config.get("tie_word_embeddings", fields.get("tie_word_embeddings", False))),
            experts=experts,
            experts_per_token=int(fields.get("num_experts_per_tok") or 0),
            moe_intermediate=int(fields.get("moe_intermediate_size") or 0),
            shared_intermediate=int(fields.get("shared_expert_intermediate_size") or 0),
            moe_layers=moe_layers,
            layer_types=layer_types or (FULL_ATTENTION,) * layers,
            linear_attention=linear,
            quantization=checkpoint_quantization(config),
            vision_parameters=vision_tower_parameters(vision) if isinstance(vision, dict) else 0,
        )

    @property
    def gated_attention(self) -> bool:
        """Qwen3-Next / Qwen3.5 full-attention layers project a gate beside the queries."""
        return self.linear_attention is not None

    def count(self, kind: str) -> int:
        """Layers of a kind: ``full_attention``, ``linear_attention``, ``moe`` or ``dense``."""
        if kind in (FULL_ATTENTION, LINEAR_ATTENTION):
            return sum(t == kind for t in self.layer_types)
        moe = sum(self.moe_layers)
        return moe if kind == "moe" else self.layers - moe

    def weights(self) -> list[Weight]:
        """Every weight of the model (``copies`` over the layers that have it)."""
        if self.model_type == "qwen":
            return self._qwen1_weights()
        h, out = self.hidden, []
        out.append(Weight("embed_tokens", self.vocab * h, 1))
        if not self.tied:
            out.append(Weight("lm_head", self.vocab * h, 1, h, self.vocab))
        out.append(Weight("norm", h, 1 + 2 * self.layers))
        out += self._attention_weights()
        out += self._linear_attention_weights()
        out += self._mlp_weights()
        if self.vision_parameters:
            out.append(Weight("visual", self.vision_parameters, 1))
        return [w for w in out if w.copies > 0 and w.size > 0]

    def _attention_weights(self) -> list[Weight]:
        n = self.count(FULL_ATTENTION)
        h, q, kv = self.hidden, self.heads * self.head_dim, self.kv_heads * self.head_dim
        gate = 2 if self.gated_attention else 1
        weights = [
            Weight("self_attn.q_proj", h * q * gate, n, h, q * gate),
            Weight("self_attn.k_proj", h * kv, n, h, kv),
            Weight("self_attn.v_proj", h * kv, n, h, kv),
            Weight("self_attn.o_proj", q * h, n, q, h),
        ]
        if self.model_type == "qwen2" or self.model_type == "qwen2_moe":
            weights.append(Weight("self_attn.bias", q + 2 * kv, n))
        else:  # Qwen3 and later normalise queries and keys per head
            weights.append(Weight("self_attn.qk_norm", 2 * self.head_dim, n))
        return weights

    def _linear_attention_weights(self) -> list[Weight]:
        la, n, h = self.linear_attention, self.count(LINEAR_ATTENTION), self.hidden
        if la is None or not n:
            return []
        conv = 2 * la.keys + la.values
        weights = [
            Weight("linear_attn.conv1d", conv * la.conv_kernel, n),
            Weight("linear_attn.heads", 2 * la.value_heads + la.value_dim, n),  # A, dt, norm
            Weight("linear_attn.out_proj", la.values * h, n, la.values, h),
        ]
        if self.model_type == "qwen3_next":
            qkvz = 2 * la.keys + 2 * la.values
            weights += [
                Weight("linear_attn.in_proj_qkvz", h * qkvz, n, h, qkvz),
                Weight("linear_attn.in_proj_ba", h * 2 * la.value_heads, n, h, 2 * la.value_heads),
            ]
        else:
            qkv = 2 * la.keys + la.values
            heads = la.value_heads
            weights += [
                Weight("linear_attn.in_proj_qkv", h * qkv, n, h, qkv),
                Weight("linear_attn.in_proj_z", h * la.values, n, h, la.values),
                Weight("linear_attn.in_proj_b", h * heads, n, h, heads),
                Weight("linear_attn.in_proj_a", h * heads, n, h, heads),
            ]
        return weights

    def _mlp_weights(self) -> list[Weight]:
        h, dense, moe = self.hidden, self.count("dense"), self.count("moe")
        weights = _swiglu("mlp", h, self.intermediate, dense)
        if moe:
            e, m = self.experts, self.moe_intermediate
            weights += [
                Weight("mlp.gate", h * e, moe, h, e),
                Weight("mlp.experts.gate_up_proj", e * h * 2 * m, moe, h, 2 * m, e),
                Weight("mlp.experts.down_proj", e * m * h, moe, m, h, e),
            ]
            if self.shared_intermediate:
                weights += _swiglu("mlp.shared_expert", h, self.shared_intermediate, moe)
                weights.append(Weight("mlp.shared_expert_gate", h, moe, h, 1))
        return weights

    def _qwen1_weights(self) -> list[Weight]:
        h, i, n = self.hidden, self.intermediate, self.layers
        return [
            Weight("wte", self.vocab * h, 1),
            Weight("lm_head", self.vocab * h, 1, h, self.vocab),
            Weight("ln", h, 1 + 2 * n),
            Weight("attn.c_attn", h * 3 * h, n, h, 3 * h),
            Weight("attn.c_attn.bias", 3 * h, n),
            Weight("attn.c_proj", h * h, n, h, h),
            Weight("mlp.w1", h * i, n, h, i),
            Weight("mlp.w2", h * i, n, h, i),
            Weight("mlp.c_proj", i * h, n, i, h),
        ]

    def parameters(self) -> int:
        """All parameters (every expert, the vision tower included)."""
        return sum(w.total for w in self.weights())

    def describe(self) -> str:
        """``qwen3_moe, 48 layers, hidden 2048, 128 experts (8 routed), 30.5B parameters``."""
        parts = [self.model_type or "unknown", f"{self.layers} layers", f"hidden {self.hidden}"]
        linear = self.count(LINEAR_ATTENTION)
        if linear:
            parts.append(f"{linear} linear-attention layers")
        if self.experts:
            parts.append(f"{self.experts} experts ({self.experts_per_token} routed)")
        if self.quantization is not None:
            parts.append(self.quantization.describe())
        return ", ".join(parts) + f", {self.parameters() / 1e9:.2f}B parameters"


def _swiglu(prefix: str, h: int, i: int, copies: int) -> list[Weight]:
    return [
        Weight(f"{prefix}.gate_proj", h * i, copies, h, i),
        Weight(f"{prefix}.up_proj", h * i, copies, h, i),
        Weight(f"{prefix}.down_proj", i * h, copies, i, h),
    ]


def vision_tower_parameters(vision: dict[str, Any]) -> int:
    """Parameters of a Qwen3.5 vision tower (frozen in text fine-tuning, held all the same)."""
    h = int(vision.get("hidden_size") or 0)
    i = int(vision.get("intermediate_size") or 0)
    depth = int(vision.get("depth") or 0)
    if not (h and depth):
        return 0
    patch = int(vision.get("patch_size") or 16)
    temporal = int(vision.get("temporal_patch_size") or 2)
    channels = int(vision.get("in_channels") or 3)
    out = int(vision.get("out_hidden_size") or h)
    merge = int(vision.get("spatial_merge_size") or 2) ** 2
    positions = int(vision.get("num_position_embeddings") or 0)
    patch_embed = channels * temporal * patch * patch * h + h
    block = 4 * h + (3 * h * h + 3 * h) + (h * h + h) + (h * i + i) + (i * h + h)
    merged = h * merge
    merger = 2 * h + (merged * merged + merged) + (merged * out + out)
    return patch_embed + positions * h + depth * block + merger


# The config.json fields ModelShape reads (the validator reports only these).
SHAPE_KEYS = frozenset(
    {
        "model_type", "hidden_size", "num_hidden_layers", "num_attention_heads",
        "num_key_value_heads", "head_dim", "kv_channels", "intermediate_size", "vocab_size",
        "tie_word_embeddings", "num_experts", "num_local_experts", "num_experts_per_tok",
        "moe_intermediate_size", "shared_expert_intermediate_size", "decoder_sparse_step",
        "mlp_only_layers", "layer_types", "full_attention_interval", "linear_num_key_heads",
        "linear_num_value_heads", "linear_key_head_dim", "linear_value_head_dim",
        "linear_conv_kernel_dim",
    }
)  # fmt: skip
_QUANTIZATION_KEYS = frozenset(
    {"quant_method", "bits", "w_bit", "group_size", "q_group_size", "load_in_4bit", "load_in_8bit"}
)
_VISION_KEYS = frozenset(
    {
        "hidden_size", "intermediate_size", "depth", "patch_size", "temporal_patch_size",
        "in_channels", "out_hidden_size", "spatial_merge_size", "num_position_embeddings",
    }
)  # fmt: skip


def shape_fields(config: dict[str, Any]) -> dict[str, Any]:
    """The part of a ``config.json`` that decides the model's shape (a few hundred bytes)."""
    fields = {k: v for k, v in config.items() if k in SHAPE_KEYS}
    for key, keep in (
        ("text_config", SHAPE_KEYS | {"quantization_config"}),
        ("vision_config", _VISION_KEYS),
        ("quantization_config", _QUANTIZATION_KEYS),
    ):
        nested = config.get(key)
        if isinstance(nested, dict):
            fields[key] = {k: v for k, v in nested.items() if k in keep}
            if key == "text_config" and isinstance(nested.get("quantization_config"), dict):
                found = nested["quantization_config"]
                fields[key]["quantization_config"] = {
                    k: v for k, v in found.items() if k in _QUANTIZATION_KEYS
                }
    return fields


# Shape fields of public hub checkpoints' config.json (instruct and base share them).
_QWEN25 = {"model_type": "qwen2", "vocab_size": 151936}
_QWEN3 = {"model_type": "qwen3", "vocab_size": 151936, "head_dim": 128}


def _qwen25(h: int, n: int, heads: int, kv: int, i: int, **extra: Any) -> dict[str, Any]:
    return {
        **_QWEN25,
        "hidden_size": h,
        "num_hidden_layers": n,
        "num_attention_heads": heads,
        "num_key_value_heads": kv,
        "intermediate_size": i,
        **extra,
    }


def _qwen3(h: int, n: int, heads: int, kv: int, i: int, tied: bool) -> dict[str, Any]:
    return {
        **_QWEN3,
        "hidden_size": h,
        "num_hidden_layers": n,
        "num_attention_heads": heads,
        "num_key_value_heads": kv,
        "intermediate_size": i,
        "tie_word_embeddings": tied,
    }


KNOWN_CONFIGS: dict[str, dict[str, Any]] = {
    "Qwen/Qwen2.5-0.5B": _qwen25(896, 24, 14, 2, 4864, tie_word_embeddings=True),
    "Qwen/Qwen2.5-1.5B": _qwen25(1536, 28, 12, 2, 8960, tie_word_embeddings=True),
    "Qwen/Qwen2.5-3B": _qwen25(2048, 36, 16, 2, 11008, tie_word_embeddings=True),
    "Qwen/Qwen2.5-7B": _qwen25(3584, 28, 28, 4, 18944, vocab_size=152064),
    "Qwen/Qwen2.5-14B": _qwen25(5120, 48, 40, 8, 13824, vocab_size=152064),
    "Qwen/Qwen2.5-32B": _qwen25(5120, 64, 40, 8, 27648, vocab_size=152064),
    "Qwen/Qwen2.5-72B": _qwen25(8192, 80, 64, 8, 29568, vocab_size=152064),
    "Qwen/Qwen3-0.6B": _qwen3(1024, 28, 16, 8, 3072, tied=True),
    "Qwen/Qwen3-1.7B": _qwen3(2048, 28, 16, 8, 6144, tied=True),
    "Qwen/Qwen3-4B": _qwen3(2560, 36, 32, 8, 9728, tied=True),
    "Qwen/Qwen3-8B": _qwen3(4096, 36, 32, 8, 12288, tied=False),
    "Qwen/Qwen3-14B": _qwen3(5120, 40, 40, 8, 17408, tied=False),
    "Qwen/Qwen3-32B": _qwen3(5120, 64, 64, 8, 25600, tied=False),
    "Qwen/Qwen3-30B-A3B": {
        **_qwen3(2048, 48, 32, 4, 6144, tied=False),
        "model_type": "qwen3_moe",
        "num_experts": 128,
        "num_experts_per_tok": 8,
        "moe_intermediate_size": 768,
    },
    "Qwen/Qwen3-235B-A22B": {
        **_qwen3(4096, 94, 64, 4, 12288, tied=False),
        "model_type": "qwen3_moe",
        "num_experts": 128,
        "num_experts_per_tok": 8,
        "moe_intermediate_size": 1536,
    },
}
# Suffixes of released variants that keep the base's shape.
_VARIANT_SUFFIXES = ("-Instruct", "-Thinking", "-Base", "-Chat")


# Qwen's quantized releases: the base's shape, packed as their config.json says (GPTQ and
# AWQ both with groups of 128).
_QUANTIZED_RELEASES = {
    "-GPTQ-Int4": {"quant_method": "gptq", "bits": 4, "group_size": 128},
    "-GPTQ-Int8": {"quant_method": "gptq", "bits": 8, "group_size": 128},
    "-AWQ": {"quant_method": "awq", "bits": 4, "group_size": 128},
}


def known_config(name: str) -> dict[str, Any] | None:
    """The shape fields of a known hub id (``Qwen/Qwen2.5-7B-Instruct``), or None.

    A quantized release (``-GPTQ-Int4``, ``-GPTQ-Int8``, ``-AWQ``) has its base's shape and
    the packing of Qwen's releases.
    """
    stem = name.strip().rstrip("/")
    packing: dict[str, Any] | None = None
    for suffix, found in _QUANTIZED_RELEASES.items():
        if stem.endswith(suffix):
            stem, packing = stem.removesuffix(suffix), found
    stem = stem.removesuffix("-2507")
    for suffix in _VARIANT_SUFFIXES:
        stem = stem.removesuffix(suffix)
    known = KNOWN_CONFIGS.get(stem)
    if known is None:
        return None
    return {**known, "quantization_config": dict(packing)} if packing else dict(known)
