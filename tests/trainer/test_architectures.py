"""Every Qwen architecture trains, merges and serves on the CPU (qwenft_trainer.architectures).

Covers, on the tiny random model of each architecture (qwen2, qwen3, qwen3_moe, qwen3_next,
qwen3_5, qwen3_5_moe; the Qwen3.5 ones are the multimodal checkpoints Qwen publishes):
``describe`` picks the class that loads the whole checkpoint (``load_model`` keeps every
weight, where ``AutoModelForCausalLM`` would drop the vision tower) and names module paths
that exist; a vision module in ``lora.modules_to_save`` is refused, naming it; LoRA through
the real trainer adapts only the language model (no adapter on ``model.visual``, the vision
tower and every base weight unchanged); the merged checkpoint is still the base's
architecture with the same tensors, vision weights bit-identical, and the real server app
loads it with that class and answers a chat request exactly as base + adapter would; the
server holding the adapter over its base answers the same; a full fine-tune of a dense and a
multimodal model trains every language weight, keeps the vision tower frozen and saves a
checkpoint that reloads and serves; Q-LoRA (bitsandbytes' CPU backend) on qwen3, qwen3_5
and qwen3_5_moe quantizes the language model but not the vision tower, and merges into the
un-quantized base.

Every run asks for packing (the default); the trainer's packing decision turns it off for
the Gated DeltaNet architectures (qwen3_next, qwen3_5, qwen3_5_moe) on the CPU, and the
test checks their summaries say so.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from qwenft_trainer import architectures
from qwenft_trainer.architectures import Architecture
from qwenft_trainer.config import TrainConfig
from qwenft_trainer.generation import Engine, EngineConfig, SamplingParams, load_engine
from qwenft_trainer.merge import MergeOptions, merge
from qwenft_trainer.merge_checks import safetensors_shapes
from qwenft_trainer.tiny import TINY_ARCHS
from support import poll
from trainrun import InProcessRun, write_config, write_dialogues

MULTIMODAL = ("qwen3_5", "qwen3_5_moe")
LINEAR_ATTENTION = ("qwen3_next", "qwen3_5", "qwen3_5_moe")
CHAT = [{"role": "user", "content": "What is the capital of France?"}]
ANSWER_TOKENS = 8

TinyArchDir = Callable[[str], Path]


def arch_of(model_dir: Path) -> Architecture:
    return architectures.read_architecture(str(model_dir))


def checkpoint_tensors(model_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    tensors: dict[str, torch.Tensor] = {}
    for file in sorted(model_dir.glob("*.safetensors")):
        tensors.update(load_file(file))
    return tensors


def tower_keys(tensors: dict[str, torch.Tensor], arch: Architecture) -> list[str]:
    return [k for k in tensors if any(k.startswith(f"{t}.") for t in arch.frozen_towers)]


# --- which class loads what ------------------------------------------------------------


@pytest.mark.parametrize("arch_name", TINY_ARCHS)
def test_describe_picks_the_class_that_keeps_the_whole_checkpoint(
    tiny_arch_dir: TinyArchDir, arch_name: str
) -> None:
    from qwenft_trainer.modeling import load_model

    model_dir = tiny_arch_dir(arch_name)
    arch = arch_of(model_dir)
    assert arch.model_type == arch_name
    assert arch.multimodal == (arch_name in MULTIMODAL)
    assert arch.linear_attention == (arch_name in LINEAR_ATTENTION)
    assert arch.moe == (arch_name.endswith("moe") or arch_name == "qwen3_next")
    config = TrainConfig.model_validate(
        {
            "model": {"name_or_path": str(model_dir)},
            "data": {"path": "unused.jsonl"},
            "output_dir": "unused",
            "training": {"precision": "fp32"},
        }
    )
    model = load_model(config)
    assert type(model).__name__ == arch.class_name
    # Every weight of the checkpoint is in the loaded model (tied weights counted once).
    stored = sum(t.numel() for t in checkpoint_tensors(model_dir).values())
    assert sum(p.numel() for p in model.parameters()) == stored
    layers = model.get_submodule(f"{arch.language_model}.layers")
    assert len(layers) == 2
    for tower in arch.frozen_towers:
        assert "Vision" in type(model.get_submodule(tower)).__name__
    if arch.multimodal:
        from transformers import AutoModelForCausalLM

        # Why the class matters: the causal-LM class loads the text model only.
        text_only = AutoModelForCausalLM.from_pretrained(model_dir)
        assert not any("visual" in name for name, _ in text_only.named_parameters())
        assert sum(p.numel() for p in text_only.parameters()) < stored


def test_describe_reads_plain_config_dicts() -> None:
    text = architectures.describe(
        {"model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"], "num_hidden_layers": 2}
    )
    assert text.auto_class == "AutoModelForCausalLM"
    assert (text.language_model, text.frozen_towers) == ("model", ())
    assert text.lora_exclude_pattern is None and text.quantization_skip_modules is None
    vision = architectures.describe(
        {
            "model_type": "qwen3_5_moe",
            "architectures": ["Qwen3_5MoeForConditionalGeneration"],
            "vision_config": {"depth": 27},
            "text_config": {"num_experts": 256, "layer_types": ["linear_attention"]},
        }
    )
    assert vision.auto_class == "AutoModelForImageTextToText"
    assert vision.language_model == "model.language_model"
    assert (vision.moe, vision.linear_attention) == (True, True)
    import re

    pattern = vision.lora_exclude_pattern
    assert pattern is not None
    assert re.fullmatch(pattern, "model.visual.blocks.0.attn.qkv")
    assert re.fullmatch(pattern, "model.visual")
    assert not re.fullmatch(pattern, "model.language_model.layers.0.self_attn.q_proj")
    assert not re.fullmatch(pattern, "model.visual_extra.proj")
    assert vision.quantization_skip_modules == ["model.visual", "lm_head"]


def test_training_a_vision_module_is_refused_naming_it(tiny_arch_dir: TinyArchDir) -> None:
    from qwenft_trainer.modeling import load_model, prepare_model

    config = TrainConfig.model_validate(
        {
            "model": {"name_or_path": str(tiny_arch_dir("qwen3_5"))},
            "data": {"path": "unused.jsonl"},
            "output_dir": "unused",
            "training": {"precision": "fp32"},
            "lora": {"modules_to_save": ["merger"]},
        }
    )
    with pytest.raises(ValueError, match=r"model\.visual\.merger\..* would be trained") as info:
        prepare_model(load_model(config), config)
    assert "lora.modules_to_save" in str(info.value)


# --- the matrix: train, merge, serve ---------------------------------------------------


@dataclass
class Trained:
    base: Path
    out: Path
    run: InProcessRun


@pytest.fixture(scope="module")
def trained(
    tiny_arch_dir: TinyArchDir, tmp_path_factory: pytest.TempPathFactory
) -> Callable[[str, str], Trained]:
    """``trained(arch, method)``: one real trainer run (2 steps) per pair, in this process."""
    cache: dict[tuple[str, str], Trained] = {}

    def train(arch: str, method: str) -> Trained:
        if (arch, method) not in cache:
            base = tiny_arch_dir(arch)
            root = tmp_path_factory.mktemp(f"{arch}-{method}")
            data = write_dialogues(root / "train.jsonl", count=12)
            training: dict[str, Any] = {"max_steps": 2}
            extra: dict[str, Any] = {"method": method}
            if method == "qlora":
                training["precision"] = "bf16"
                extra["quantization"] = {"quant_type": "nf4", "compute_dtype": "bf16"}
            if method == "full":
                training["learning_rate"] = 0.001
            config = write_config(
                root / "train.yaml", base, data, root / "out", training=training, **extra
            )
            run = InProcessRun(config)
            assert run.code == 0, run.stderr[-3000:]
            losses = run.losses()
            assert len(losses) == 2 and all(0 < loss < 20 for loss in losses), losses
            summary = json.loads((root / "out" / "summary.json").read_text())
            expected = "off" if arch in LINEAR_ATTENTION else "padded_rows"
            assert summary["packing"] == expected, summary["packing_reason"]
            cache[(arch, method)] = Trained(base=base, out=root / "out", run=run)
        return cache[(arch, method)]

    return train


def serve_chat(model_dir: Path, adapter: Path | None = None) -> tuple[Engine, dict[str, Any]]:
    """One greedy chat completion from the real server app over ``model_dir``.

    With ``adapter``, the server holds it over the base under the name "tuned" and the
    request asks for that name.
    """
    from fastapi.testclient import TestClient
    from qwenft_trainer.serve_app import create_app

    adapters = {"tuned": str(adapter)} if adapter else {}
    config = EngineConfig(
        model=str(model_dir), served_model_name="tiny", adapters=adapters, device="cpu"
    )
    app = create_app(lambda: load_engine(config))
    with TestClient(app) as client:
        poll(
            lambda: client.get("/readyz").status_code == 200,
            timeout=120,
            what="the model to load",
            interval=0.05,
        )
        response = client.post(
            "/v1/chat/completions",
            json={
                "model": "tuned" if adapter else "tiny",
                "messages": CHAT,
                "temperature": 0,
                "max_tokens": ANSWER_TOKENS,
                "ignore_eos": True,
            },
        )
        engine = app.state.server.engine
    assert response.status_code == 200, response.text
    return engine, response.json()


def reference_answer(engine: Engine, model: Any) -> str:
    """What ``model`` answers to CHAT through the same generation code, greedy."""
    config = EngineConfig(model="reference", served_model_name="tiny")  # no adapter switching
    reference = Engine(model.eval(), engine.tokenizer, config=config, context_length=2048)
    params = SamplingParams(max_tokens=ANSWER_TOKENS, temperature=0, ignore_eos=True)
    return reference.generate("tiny", reference.encode(CHAT), params).text


@pytest.mark.slow
@pytest.mark.parametrize("arch_name", TINY_ARCHS)
def test_lora_trains_only_the_language_model(
    trained: Callable[[str, str], Trained], arch_name: str
) -> None:
    result = trained(arch_name, "lora")
    arch = arch_of(result.base)
    model, initial = result.run.model, result.run.initial
    adapted = [n for n in initial if ".lora_" in n]
    assert adapted, "the default targets adapt something"
    for name, param in model.named_parameters():
        if ".lora_" in name:
            assert name.startswith(f"{architectures.PEFT_PREFIX}{arch.language_model}.layers.")
            assert not torch.equal(param, initial[name]), f"{name} did not train"
        else:
            assert not param.requires_grad and torch.equal(param, initial[name]), name
    adapter = safetensors_shapes([result.out / "adapter_model.safetensors"])
    assert len(adapter) == len(adapted)
    assert not [k for k in adapter if ".visual." in k]
    if arch.multimodal:
        towers = list(architectures.tower_parameters(model, arch))
        assert towers and not any(p.requires_grad for _, p in towers)
        saved = json.loads((result.out / "adapter_config.json").read_text())
        assert saved["exclude_modules"] == arch.lora_exclude_pattern


@pytest.mark.slow
@pytest.mark.parametrize("arch_name", TINY_ARCHS)
def test_merged_checkpoint_keeps_the_architecture_and_serves(
    trained: Callable[[str, str], Trained], arch_name: str, tmp_path: Path
) -> None:
    result = trained(arch_name, "lora")
    arch = arch_of(result.base)
    merged = tmp_path / "merged"
    report = merge(MergeOptions(adapter=result.out, output=merged))
    assert report.passed and report.dtype == "float32", report
    assert report.adapter_effect > 10 * report.tolerance, "the probe must see the adapter"

    assert arch_of(merged) == arch, "merging changed the architecture"
    base_tensors, merged_tensors = checkpoint_tensors(result.base), checkpoint_tensors(merged)
    assert merged_tensors.keys() == base_tensors.keys()
    changed = {k for k, t in base_tensors.items() if not torch.equal(t, merged_tensors[k])}
    assert changed, "the merge changed no weight"
    assert all(k.startswith(f"{arch.language_model}.layers.") for k in changed), changed
    if arch.multimodal:
        assert tower_keys(base_tensors, arch), "the base has a vision tower"
        assert not changed & set(tower_keys(base_tensors, arch))

    engine, body = serve_chat(merged)
    assert type(engine.model).__name__ == arch.class_name
    choice = body["choices"][0]
    assert choice["message"]["role"] == "assistant"
    assert choice["finish_reason"] == "length"
    assert body["usage"]["completion_tokens"] == ANSWER_TOKENS
    # The merged model answers what base + adapter answers (greedy, same prompt).
    assert choice["message"]["content"] == reference_answer(engine, result.run.model)


@pytest.mark.slow
@pytest.mark.parametrize("arch_name", TINY_ARCHS)
def test_adapter_is_served_over_its_base(
    trained: Callable[[str, str], Trained], arch_name: str
) -> None:
    result = trained(arch_name, "lora")
    engine, body = serve_chat(result.base, adapter=result.out)
    assert type(engine.model.get_base_model()).__name__ == arch_of(result.base).class_name
    assert body["model"] == "tuned"
    assert body["choices"][0]["message"]["content"] == reference_answer(engine, result.run.model)


@pytest.mark.slow
@pytest.mark.parametrize("arch_name", [a for a in TINY_ARCHS if a != "qwen2"])  # qwen2: elsewhere
def test_full_finetune_keeps_the_vision_tower_and_serves(
    trained: Callable[[str, str], Trained], arch_name: str
) -> None:
    result = trained(arch_name, "full")
    arch = arch_of(result.base)
    model, initial = result.run.model, result.run.initial
    tower_names = {name for name, _ in architectures.tower_parameters(model, arch)}
    assert bool(tower_names) == arch.multimodal
    for name, param in model.named_parameters():
        if name in tower_names:
            assert not param.requires_grad and torch.equal(param, initial[name]), name
        else:
            assert not torch.equal(param, initial[name]), f"{name} did not train"

    assert arch_of(result.out) == arch
    base_tensors, saved = checkpoint_tensors(result.base), checkpoint_tensors(result.out)
    assert saved.keys() == base_tensors.keys()
    for key in tower_keys(base_tensors, arch):
        assert torch.equal(saved[key], base_tensors[key]), f"{key} changed"

    engine, body = serve_chat(result.out)
    assert type(engine.model).__name__ == arch.class_name
    assert body["choices"][0]["message"]["content"] == reference_answer(engine, model)


@pytest.mark.slow
@pytest.mark.parametrize("arch_name", [a for a in TINY_ARCHS if a != "qwen2"])  # qwen2: elsewhere
def test_qlora_quantizes_the_language_model_only_and_merges(
    trained: Callable[[str, str], Trained], arch_name: str, tmp_path: Path
) -> None:
    bnb = pytest.importorskip("bitsandbytes", reason="Q-LoRA needs bitsandbytes")
    result = trained(arch_name, "qlora")
    arch = arch_of(result.base)
    base_model = result.run.model.get_base_model()
    quantized = [n for n, m in base_model.named_modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert quantized and all(n.startswith(f"{arch.language_model}.layers.") for n in quantized)
    for tower in arch.frozen_towers:
        linears = [
            m for m in base_model.get_submodule(tower).modules() if type(m).__name__ == "Linear"
        ]
        assert linears, "the vision tower keeps plain nn.Linear layers"

    merged = tmp_path / "merged"
    report = merge(MergeOptions(adapter=result.out, output=merged))
    assert report.passed and report.method == "qlora"
    base_tensors, merged_tensors = checkpoint_tensors(result.base), checkpoint_tensors(merged)
    assert merged_tensors.keys() == base_tensors.keys()
    for key in tower_keys(base_tensors, arch):
        assert torch.equal(merged_tensors[key], base_tensors[key]), f"{key} changed"
