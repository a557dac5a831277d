"""Q-LoRA over pre-quantized GPTQ and AWQ bases, end to end on the CPU.

Each base is a tiny Qwen2 model quantized here with gptqmodel (4-bit, group size 32, random
calibration tokens), the way Qwen's ``-GPTQ-Int4`` and ``-AWQ`` releases are made. Covers:
the trainer loads it with the checkpoint's own quantization (gptqmodel kernels wrapped by
peft's GPTQ / AWQ LoRA layers, no bitsandbytes layer anywhere), training runs with a finite
loss, the packed weights stay equal to the checkpoint's while the adapters move, the adapter
reloads over the same base with the trained model's logits; the merge refuses the quantized
base with the fix and merges (verified) into the un-quantized model; the builtin server's
engine serves the adapter over the GPTQ base (greedy answer = peft generate); the validator accepts
``--method qlora`` and refuses ``--method lora`` and a merge into the quantized base; on a
GPU (``gpu``-marked), the same training with gptqmodel's CUDA kernels in fp16.

Skipped, with the install command, where gptqmodel (which transformers needs to load GPTQ
and AWQ checkpoints) is not installed.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from qwenft_operator.cli import main as qwenft
from qwenft_trainer.tiny import TinyModelSpec, build_tiny_qwen
from trainrun import InProcessRun, write_config, write_dialogues

pytestmark = pytest.mark.slow

# AWQ's clipping search works on blocks of 64 output channels: k_proj/v_proj need 64 outputs.
SPEC = TinyModelSpec(hidden_size=128, intermediate_size=256)
GROUP_SIZE = 32
IDS = torch.tensor([[1, 5, 9, 42, 7, 100, 3]])
PROJECTIONS = 7 * SPEC.num_hidden_layers
LORA_LAYER = {"gptq": "GPTQLoraLinear", "awq": "AwqLoraLinear"}
SUFFIX = {"gptq": "GPTQ-Int4", "awq": "AWQ"}
# The trainer takes the GPU when there is one: fp16 there (AWQ's CUDA kernels have no bf16),
# bf16 on the CPU (the Trainer's fp16 needs a GPU).
PRECISION = "fp16" if torch.cuda.is_available() else "bf16"
DTYPE = torch.float16 if PRECISION == "fp16" else torch.bfloat16


@pytest.fixture(scope="module")
def bases(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], tuple[Path, Path]]:
    """``bases("gptq" | "awq")``: (un-quantized tiny model, its quantized copy)."""
    # gptqmodel's default loader pool wants 2 CPU workers, more than it gives itself on 2 cores.
    os.environ.setdefault("GPTQMODEL_CPU_WORKERS", "2")
    pytest.importorskip(
        "gptqmodel",
        reason="gptqmodel is not installed: pip install 'qwenft[quantized]' (gptqmodel, "
        "optimum); transformers needs it to load GPTQ and AWQ checkpoints",
    )
    # Named like Qwen's releases, side by side: Qwen-tiny, Qwen-tiny-GPTQ-Int4, Qwen-tiny-AWQ.
    root = tmp_path_factory.mktemp("bases")
    plain = build_tiny_qwen(root / "Qwen-tiny", SPEC)
    built: dict[str, Path] = {}

    def quantized(method: str) -> tuple[Path, Path]:
        if method not in built:
            built[method] = quantize(plain, method, root / f"Qwen-tiny-{SUFFIX[method]}")
        return plain, built[method]

    return quantized


def quantize(plain: Path, method: str, out: Path) -> Path:
    from gptqmodel import GPTQModel
    from gptqmodel.quantization import AWQConfig, QuantizeConfig

    settings = {"bits": 4, "group_size": GROUP_SIZE, "offload_to_disk": False}
    config = AWQConfig(**settings) if method == "awq" else QuantizeConfig(**settings)
    generator = torch.Generator().manual_seed(0)
    calibration = [
        {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
        for ids in torch.randint(3, SPEC.vocab_size, (8, 1, 64), generator=generator)
    ]
    with contextlib.chdir(out.parent):  # gptqmodel writes its quantization logs to ./logs
        model = GPTQModel.load(str(plain), config, device="cpu")
        model.quantize(calibration, batch_size=1)
        model.save(str(out))
    declared = json.loads((out / "config.json").read_text())["quantization_config"]
    assert declared["quant_method"] == method and declared["bits"] == 4
    return out


def packed_weights(model: Any) -> dict[str, torch.Tensor]:
    return {
        name.split("base_model.model.", 1)[-1].replace(".base_layer", ""): buffer
        for name, buffer in model.named_buffers()
        if name.endswith("qweight")
    }


def checkpoint_tensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    tensors: dict[str, torch.Tensor] = {}
    for file in sorted(path.glob("*.safetensors")):
        tensors.update(load_file(str(file)))
    return tensors


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_dialogues(tmp_path_factory.mktemp("data") / "train.jsonl")


@pytest.mark.parametrize("method", ["gptq", "awq"])
def test_qlora_trains_over_the_checkpoints_own_quantization(
    bases: Callable[[str], tuple[Path, Path]], data: Path, method: str, tmp_path: Path
) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    _, quantized = bases(method)
    out = tmp_path / "out"
    config = write_config(
        tmp_path / "qlora.yaml",
        quantized,
        data,
        out,
        method="qlora",
        quantization={"compute_dtype": PRECISION},
        training={"max_steps": 3, "precision": PRECISION, "gradient_checkpointing": True},
    )
    run = InProcessRun(config)
    assert run.code == 0, run.stderr[-3000:]
    model = run.model
    layers = [type(m).__name__ for m in model.modules()]
    assert layers.count(LORA_LAYER[method]) == PROJECTIONS
    assert not [name for name in layers if "4bit" in name], "bitsandbytes must not re-quantize"
    losses = run.losses()
    assert len(losses) == 3 and all(0 < loss < 20 for loss in losses)
    for name, param in model.named_parameters():
        if "lora_" in name:
            assert not torch.equal(param, run.initial[name]), name
    on_disk = checkpoint_tensors(quantized)
    packed = packed_weights(model)
    assert len(packed) == PROJECTIONS
    for name, weights in packed.items():
        assert torch.equal(weights.cpu(), on_disk[name]), f"{name} changed in training"

    adapter = json.loads((out / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == str(quantized)
    device = next(model.parameters()).device
    base = AutoModelForCausalLM.from_pretrained(quantized, dtype=DTYPE, device_map={"": device})
    reloaded = PeftModel.from_pretrained(base, out).eval()
    with torch.no_grad():
        expected = model.eval()(input_ids=IDS.to(device)).logits.float()
        got = reloaded(input_ids=IDS.to(device)).logits.float()
        with reloaded.disable_adapter():
            without = reloaded(input_ids=IDS.to(device)).logits.float()
    # bf16 logits: one rounding step at |logit| < 4 is up to 1.6e-2 (fp16: 2e-3).
    torch.testing.assert_close(got, expected, rtol=0, atol=2e-2)
    effect = float((expected - without).abs().max())
    assert effect > 0.1, f"the trained adapter should change the logits (max change {effect:.3g})"


@pytest.fixture(scope="module")
def gptq_adapter(
    bases: Callable[[str], tuple[Path, Path]], data: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, Path, Path]:
    """(un-quantized base, GPTQ base, adapter trained 2 steps over the GPTQ base)."""
    plain, quantized = bases("gptq")
    where = tmp_path_factory.mktemp("gptq-run")
    config = write_config(
        where / "qlora.yaml",
        quantized,
        data,
        where / "out",
        method="qlora",
        quantization={"compute_dtype": PRECISION},
        training={"max_steps": 2, "precision": PRECISION},
    )
    run = InProcessRun(config)
    assert run.code == 0, run.stderr[-3000:]
    return plain, quantized, where / "out"


def test_merge_refuses_the_gptq_base_and_merges_into_the_unquantized_one(
    gptq_adapter: tuple[Path, Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    plain, _, out = gptq_adapter
    merged = tmp_path / "merged"
    # The adapter's own base is the GPTQ checkpoint: refused, naming the fix.
    assert qwenft(["merge", "--adapter", str(out), "--output", str(merged)]) == 1
    err = capsys.readouterr().err
    assert "can't be merged into packed GPTQ weights" in err
    assert f"e.g. {plain}" in err and "--base" in err
    assert not merged.exists()

    args = ["merge", "--adapter", str(out), "--output", str(merged), "--base", str(plain)]
    assert qwenft([*args, "--dtype", "fp32"]) == 0
    report = json.loads((merged / "merge_report.json").read_text())
    assert report["passed"] and report["method"] == "qlora"
    assert report["max_abs_diff"] <= report["tolerance"]
    config_json = json.loads((merged / "config.json").read_text())
    assert "quantization_config" not in config_json


def test_adapter_is_served_over_the_gptq_base(gptq_adapter: tuple[Path, Path, Path]) -> None:
    """Unmerged serving: the builtin server's engine answers with base + adapter."""
    from peft import PeftModel
    from qwenft_trainer.generation import EngineConfig, SamplingParams, load_engine
    from transformers import AutoModelForCausalLM

    _, quantized, out = gptq_adapter
    config = EngineConfig(
        model=str(quantized),
        served_model_name="tiny",
        adapters={"tuned": str(out)},
        device="cpu",
        dtype="bf16",
    )
    engine = load_engine(config)
    prompt = engine.encode([{"role": "user", "content": "What is the capital of France?"}])
    greedy = SamplingParams(max_tokens=8, temperature=0, ignore_eos=True)
    answer = engine.generate("tuned", prompt, greedy)
    assert answer.completion_tokens == 8 and answer.prompt_tokens == len(prompt)

    base = AutoModelForCausalLM.from_pretrained(
        quantized, dtype=torch.bfloat16, device_map={"": "cpu"}
    )
    direct = PeftModel.from_pretrained(base, out).eval()
    ids = torch.tensor([prompt])
    with torch.inference_mode():
        tokens = direct.generate(input_ids=ids, max_new_tokens=8, min_new_tokens=8, do_sample=False)
    assert answer.text == engine.tokenizer.decode(
        tokens[0, len(prompt) :], skip_special_tokens=True
    )


def test_validator_accepts_qlora_and_refuses_lora_and_a_quantized_merge_target(
    bases: Callable[[str], tuple[Path, Path]], data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    plain, quantized = bases("gptq")

    def validate(*args: str) -> tuple[int, str]:
        code = qwenft(["data", "validate", str(data), "--model", str(quantized), "--json", *args])
        return code, json.loads(capsys.readouterr().out)["message"]

    code, message = validate("--method", "qlora", "--merge-into", str(plain))
    assert code == 0, message
    code, message = validate("--method", "lora")
    assert code == 1 and "set method: qlora" in message
    code, message = validate("--method", "qlora", "--merge-into", str(quantized))
    assert code == 1 and "can't be merged into packed GPTQ weights" in message


@pytest.mark.gpu
@pytest.mark.parametrize("method", ["gptq", "awq"])
def test_qlora_over_a_prequantized_base_on_cuda(
    bases: Callable[[str], tuple[Path, Path]], data: Path, method: str, tmp_path: Path
) -> None:
    """gptqmodel's trainable CUDA / Triton kernels: packed weights on the GPU, fp16."""
    _, quantized = bases(method)
    config = write_config(
        tmp_path / "qlora.yaml",
        quantized,
        data,
        tmp_path / "out",
        method="qlora",
        quantization={"compute_dtype": "fp16"},
        training={"max_steps": 4, "precision": "fp16", "gradient_checkpointing": True},
    )
    run = InProcessRun(config)
    assert run.code == 0, run.stderr[-3000:]
    packed = packed_weights(run.model)
    assert len(packed) == PROJECTIONS and all(w.is_cuda for w in packed.values())
    assert [type(m).__name__ for m in run.model.modules()].count(LORA_LAYER[method]) == PROJECTIONS
    losses = run.losses()
    assert len(losses) == 4 and all(0 < loss < 20 for loss in losses)
