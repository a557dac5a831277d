"""LoRA on a mixture-of-experts model with the real trainer, and merging expert adapters.

Covers, on the tiny Qwen3-MoE (CPU, fp32): the saved adapter holds LoRA pairs for both
fused expert tensors of every layer; training moves every adapter matrix while base
weights, the router included, stay bit-identical and frozen; ``lora.train_router`` trains
the router in full and saves it with the adapter; the loss the Trainer optimizes is the
language-model loss plus ``router_aux_loss_coef`` times the router's load-balancing loss;
merging an expert adapter gives the logits of base + adapter (max |diff| <= 1e-5 of the
largest logit, fp32) on Qwen3-MoE (the trained adapter) and Qwen3.5-MoE (a random one).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from qwenft_trainer.merge import MergeOptions, merge
from qwenft_trainer.merge_checks import safetensors_shapes
from trainrun import InProcessRun, write_config, write_dialogues

pytestmark = pytest.mark.slow

EXPERTS = ["mlp.experts.gate_up_proj", "mlp.experts.down_proj"]
# fp32 on both sides: the merged weights differ from base + BA only by rounding.
MERGE_TOLERANCE = 1e-5


@dataclass
class Trained:
    run: InProcessRun
    out: Path


def _train(root: Path, model_dir: Path, **lora: Any) -> Trained:
    data = write_dialogues(root / "train.jsonl", count=24)
    config = write_config(
        root / "moe.yaml",
        model_dir,
        data,
        root / "out",
        lora={"r": 4, "alpha": 8, **lora},
        training={"max_steps": 4, "learning_rate": 0.02},
    )
    run = InProcessRun(config)
    assert run.code == 0, run.stderr[-3000:]
    return Trained(run, root / "out")


@pytest.fixture(scope="module")
def moe_run(
    tiny_arch_dir: Callable[[str], Path], tmp_path_factory: pytest.TempPathFactory
) -> Trained:
    return _train(tmp_path_factory.mktemp("moe"), tiny_arch_dir("qwen3_moe"))


@pytest.fixture(scope="module")
def router_run(
    tiny_arch_dir: Callable[[str], Path], tmp_path_factory: pytest.TempPathFactory
) -> Trained:
    return _train(
        tmp_path_factory.mktemp("moe-router"), tiny_arch_dir("qwen3_moe"), train_router=True
    )


def test_saved_adapter_holds_expert_weights(moe_run: Trained) -> None:
    out = moe_run.out
    config = json.loads((out / "adapter_config.json").read_text())
    assert sorted(config["target_parameters"]) == sorted(EXPERTS)
    assert config["modules_to_save"] is None  # the router is not trained by default
    keys = set(safetensors_shapes([out / "adapter_model.safetensors"]))
    for layer in range(2):
        prefix = f"base_model.model.model.layers.{layer}.mlp.experts."
        # one LoRA pair per fused tensor: peft nests one wrapper inside the other
        for wrapper in ("", "base_layer."):
            for part in ("lora_A", "lora_B"):
                assert f"{prefix}{wrapper}{part}.weight" in keys
    assert not any(".mlp.gate." in key for key in keys)


def test_expert_adapters_move_and_base_and_router_stay(moe_run: Trained) -> None:
    experts = attention = frozen = 0
    for name, param in moe_run.run.model.named_parameters():
        before = moe_run.run.initial[name]
        if "lora_" in name:
            assert not torch.equal(param, before), f"adapter weight {name} did not move"
            experts += ".mlp.experts." in name
            attention += ".self_attn." in name
        else:
            assert torch.equal(param, before), f"base weight {name} changed"
            assert not param.requires_grad, name
            frozen += 1
    assert experts == 2 * 2 * 2  # A and B of 2 fused tensors in 2 layers
    assert attention == 2 * 4 * 2  # A and B of q/k/v/o in 2 layers
    routers = [n for n, _ in moe_run.run.model.named_parameters() if n.endswith("mlp.gate.weight")]
    assert len(routers) == 2 and frozen > len(routers)


def test_train_router_trains_it_in_full(router_run: Trained) -> None:
    trained = [n for n, _ in router_run.run.model.named_parameters() if "gate.modules_to_save" in n]
    assert len(trained) == 2
    for name in trained:
        param = dict(router_run.run.model.named_parameters())[name]
        assert param.requires_grad
        assert not torch.equal(param, router_run.run.initial[name]), f"router {name} did not move"
    for name, param in router_run.run.model.named_parameters():
        if "gate.original_module" in name:
            assert torch.equal(param, router_run.run.initial[name]) and not param.requires_grad
    out = router_run.out
    assert json.loads((out / "adapter_config.json").read_text())["modules_to_save"] == ["mlp.gate"]
    keys = set(safetensors_shapes([out / "adapter_model.safetensors"]))
    assert {f"base_model.model.model.layers.{i}.mlp.gate.weight" for i in range(2)} <= keys


def test_the_optimized_loss_includes_the_router_aux_loss(moe_run: Trained, tmp_path: Path) -> None:
    from transformers import Trainer, TrainingArguments

    model = moe_run.run.model.eval()
    config = model.base_model.model.config
    assert config.output_router_logits, "the trainer turned the aux loss on"
    coef = float(config.router_aux_loss_coef)
    assert coef > 0
    ids = torch.randint(0, config.vocab_size, (2, 24), generator=torch.Generator().manual_seed(0))
    batch = {"input_ids": ids, "labels": ids.clone()}
    with torch.no_grad():
        out = model(**batch)
        # logits from a call without labels: with labels the run's loss path may skip them
        logits = model(input_ids=ids).logits
        lm = torch.nn.functional.cross_entropy(
            logits[:, :-1].flatten(0, 1).float(), ids[:, 1:].flatten()
        )
        args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to=[])
        optimized = Trainer(model=model, args=args).compute_loss(model, dict(batch))
    assert float(out.aux_loss) > 0.5  # about top_k for balanced routing
    assert abs(float(out.loss) - (float(lm) + coef * float(out.aux_loss))) < 1e-5
    assert abs(float(out.loss) - float(lm)) > coef * 0.5  # the aux term is there, not rounding
    assert abs(float(optimized) - float(out.loss)) < 1e-6


def _logits(model: Any, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids).logits.float()


def _check_merge(adapter: Path, base: Path, output: Path) -> None:
    """Merge with the CLI's code path, then compare the reload with base + adapter."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    report = merge(MergeOptions(adapter=adapter, output=output, base=str(base), dtype="fp32"))
    assert report.passed, report.to_json()
    ids = torch.randint(0, 200, (2, 16), generator=torch.Generator().manual_seed(1))
    base_model = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32).eval()
    plain = _logits(base_model, ids)
    reference = _logits(PeftModel.from_pretrained(base_model, str(adapter)).eval(), ids)
    merged = _logits(AutoModelForCausalLM.from_pretrained(str(output)).eval(), ids)
    scale = max(1.0, float(reference.abs().max()))
    assert float((merged - reference).abs().max()) <= MERGE_TOLERANCE * scale
    assert float((reference - plain).abs().max()) > 100 * MERGE_TOLERANCE * scale
    before = safetensors_shapes(sorted(base.glob("*.safetensors")))
    after = safetensors_shapes(sorted(output.glob("*.safetensors")))
    assert after.keys() == before.keys()  # a complete checkpoint in the base's own layout


def test_merging_a_trained_qwen3_moe_expert_adapter(
    moe_run: Trained, tiny_arch_dir: Callable[[str], Path], tmp_path: Path
) -> None:
    _check_merge(moe_run.out, tiny_arch_dir("qwen3_moe"), tmp_path / "merged")


def test_merging_a_qwen3_5_moe_expert_adapter(
    tiny_arch_dir: Callable[[str], Path], tmp_path: Path
) -> None:
    from peft import get_peft_model
    from qwenft_trainer.config import TrainConfig
    from qwenft_trainer.modeling import build_lora_config
    from transformers import AutoModelForCausalLM, AutoTokenizer

    # the text model of the tiny Qwen3.5-MoE, as its own checkpoint
    source = tiny_arch_dir("qwen3_5_moe")
    base = tmp_path / "base"
    AutoModelForCausalLM.from_pretrained(str(source)).save_pretrained(str(base))
    AutoTokenizer.from_pretrained(str(source)).save_pretrained(str(base))
    model = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32)
    config = TrainConfig.model_validate(
        {
            "model": {"name_or_path": str(base)},
            "data": {"path": "/unused.jsonl"},
            "output_dir": "/unused",
            "lora": {"r": 4, "alpha": 8},
        }
    )
    peft_model = get_peft_model(model, build_lora_config(config, model))
    generator = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.1)
    adapter = tmp_path / "adapter"
    peft_model.save_pretrained(str(adapter))
    assert peft_model.peft_config["default"].target_parameters
    _check_merge(adapter, base, tmp_path / "merged")
    shutil.rmtree(tmp_path / "merged")
