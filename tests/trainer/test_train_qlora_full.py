"""Q-LoRA and full fine-tuning end to end in one process, on the tiny model (CPU).

Covers Q-LoRA: the frozen projections are bitsandbytes ``Linear4bit`` (NF4, bf16 compute,
on bitsandbytes' CPU backend), training steps run with a finite loss, the 4-bit weights
stay untouched while the adapters move, and the adapter reloads with peft on a freshly
quantized base giving the trained model's logits. Full fine-tune: every weight trains,
loss falls, the tuning-table advice (high learning rate) is reported, and the saved full
weights (safetensors + config + tokenizer) reload with the trained model's logits.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from trainrun import InProcessRun, events, write_config, write_dialogues

pytestmark = pytest.mark.slow

IDS = torch.tensor([[1, 5, 9, 42, 7, 100, 3]])


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_dialogues(tmp_path_factory.mktemp("data") / "train.jsonl")


def test_qlora_trains_4bit_base_and_adapter_reloads(
    tiny_model_dir: Path, data: Path, tmp_path: Path
) -> None:
    import bitsandbytes as bnb
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    config = write_config(
        tmp_path / "qlora.yaml",
        tiny_model_dir,
        data,
        tmp_path / "out",
        method="qlora",
        quantization={"quant_type": "nf4", "double_quant": True, "compute_dtype": "bf16"},
        training={"max_steps": 4, "precision": "bf16", "gradient_checkpointing": True},
    )
    run = InProcessRun(config)
    assert run.code == 0, run.stderr[-3000:]
    model = run.model
    quantized = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert len(quantized) == 7 * 2, "every projection of both layers should be 4-bit"
    assert quantized[0].weight.quant_state.quant_type == "nf4"
    losses = run.losses()
    assert len(losses) == 4 and all(0 < loss < 20 for loss in losses)
    for name, param in model.named_parameters():
        if "lora_" in name:
            assert not torch.equal(param, run.initial[name]), name
        elif "base_layer" in name:
            assert torch.equal(param, run.initial[name]), name

    out = tmp_path / "out"
    assert (out / "adapter_model.safetensors").is_file()
    quant = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16,
    )
    base = AutoModelForCausalLM.from_pretrained(
        tiny_model_dir, quantization_config=quant, dtype=torch.bfloat16, device_map={"": "cpu"}
    )
    reloaded = PeftModel.from_pretrained(base, out).eval()
    with torch.no_grad():
        expected = model.eval()(input_ids=IDS).logits.float()
        got = reloaded(input_ids=IDS).logits.float()
    torch.testing.assert_close(got, expected, rtol=0, atol=2e-2)


def test_full_finetune_trains_and_saves_weights(
    tiny_model_dir: Path, data: Path, tmp_path: Path
) -> None:
    from transformers import AutoModelForCausalLM

    config = write_config(
        tmp_path / "full.yaml",
        tiny_model_dir,
        data,
        tmp_path / "out",
        method="full",
        training={"max_steps": 8, "learning_rate": 0.003},
    )
    run = InProcessRun(config)
    assert run.code == 0, run.stderr[-3000:]
    losses = run.losses()
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 0.05, losses
    advice = events(run.stdout, "train_start")[0]["advice"]
    assert any("learning_rate" in note for note in advice)
    moved = [n for n, p in run.model.named_parameters() if not torch.equal(p, run.initial[n])]
    assert len(moved) == len(run.initial), "a full fine-tune trains every weight"

    out = tmp_path / "out"
    assert (out / "model.safetensors").is_file() and (out / "config.json").is_file()
    assert (out / "tokenizer.json").is_file()
    assert not (out / "adapter_config.json").exists()
    assert json.loads((out / "summary.json").read_text())["output"] == "full"
    reloaded = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    with torch.no_grad():
        expected = run.model.eval()(input_ids=IDS).logits
        got = reloaded(input_ids=IDS).logits
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
