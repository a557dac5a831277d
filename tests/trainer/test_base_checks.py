"""Checks of the base model's config.json: pre-quantized (GPTQ / AWQ) bases and Qwen1.

Covers, from config.json files written here with the fields Qwen's releases carry: the
quantization a checkpoint declares (GPTQ, AWQ, bitsandbytes, FP8, none, nested under
text_config); the method decision (qlora trains over the checkpoint's own quantization,
lora / full / an untrainable format refused with the fix, bitsandbytes-only settings that
contradict it refused naming the fields); the load kwargs (trainable gptqmodel kernels, no
BitsAndBytesConfig); the merge refusal naming the un-quantized release; Qwen1 checkpoints
(7B, 14B, 72B, 1.8B, chat, base, Int4 / Int8, a directory that doesn't say) refused naming
the Qwen2.5 / Qwen3 model to use; and both entry points: ``qwenft data validate`` (exit 1
with the message, 2 when config.json can't be read) and the trainer's start (InvalidConfig
in the termination log before any model loads).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from qwenft_operator.cli import main as qwenft
from qwenft_trainer.base_checks import base_model_problems
from qwenft_trainer.config import QuantizationSettings, TrainConfig
from qwenft_trainer.quantized import (
    CheckpointQuantization,
    checkpoint_quantization,
    merge_problem,
    method_problems,
    unquantized_name,
)
from qwenft_trainer.qwen1 import is_qwen1, qwen1_problem, successor
from trainrun import write_config, write_dialogues

# quantization_config of Qwen/Qwen2.5-7B-Instruct-GPTQ-Int4 and Qwen/Qwen2.5-7B-Instruct-AWQ.
GPTQ_INT4 = {
    "bits": 4,
    "damp_percent": 0.01,
    "dataset": None,
    "desc_act": False,
    "group_size": 128,
    "modules_in_block_to_quantize": None,
    "quant_method": "gptq",
    "sym": True,
    "true_sequential": True,
    "use_exllama": True,
}
AWQ = {
    "bits": 4,
    "group_size": 128,
    "modules_to_not_convert": None,
    "quant_method": "awq",
    "version": "gemm",
    "zero_point": True,
}
FP8 = {"activation_scheme": "dynamic", "quant_method": "fp8", "weight_block_size": [128, 128]}
QWEN2 = {
    "architectures": ["Qwen2ForCausalLM"],
    "model_type": "qwen2",
    "hidden_size": 3584,
    "num_hidden_layers": 28,
    "vocab_size": 152064,
}
# config.json of Qwen/Qwen-7B-Chat (the first generation: remote code, tiktoken).
QWEN1_7B_CHAT = {
    "architectures": ["QWenLMHeadModel"],
    "auto_map": {
        "AutoConfig": "configuration_qwen.QWenConfig",
        "AutoModelForCausalLM": "modeling_qwen.QWenLMHeadModel",
    },
    "attn_dropout_prob": 0.0,
    "bf16": False,
    "emb_dropout_prob": 0.0,
    "fp16": False,
    "fp32": False,
    "hidden_size": 4096,
    "intermediate_size": 22016,
    "initializer_range": 0.02,
    "kv_channels": 128,
    "layer_norm_epsilon": 1e-06,
    "max_position_embeddings": 8192,
    "model_type": "qwen",
    "no_bias": True,
    "num_attention_heads": 32,
    "num_hidden_layers": 32,
    "onnx_safe": None,
    "rotary_emb_base": 10000,
    "rotary_pct": 1.0,
    "scale_attn_weights": True,
    "seq_length": 8192,
    "tie_word_embeddings": False,
    "tokenizer_class": "QWenTokenizer",
    "transformers_version": "4.32.0",
    "use_cache": True,
    "use_dynamic_ntk": True,
    "use_flash_attn": "auto",
    "use_logn_attn": True,
    "vocab_size": 151936,
}
GPTQ_NAME = "Qwen/Qwen2.5-7B-Instruct-GPTQ-Int4"
DATA = Path(__file__).parent / "data" / "mixed.jsonl"


def checkpoint(path: Path, config: dict[str, Any]) -> Path:
    """A checkpoint directory holding only its config.json (all the checks read)."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(config), encoding="utf-8")
    return path


def qlora(**quantization: Any) -> QuantizationSettings:
    return QuantizationSettings.model_validate(quantization)


# -- what a checkpoint declares ------------------------------------------------------------


def test_gptq_and_awq_releases_are_detected_with_bits_and_group_size() -> None:
    gptq = checkpoint_quantization({**QWEN2, "quantization_config": GPTQ_INT4})
    awq = checkpoint_quantization({**QWEN2, "quantization_config": AWQ})
    assert gptq == CheckpointQuantization(method="gptq", bits=4, group_size=128)
    assert awq == CheckpointQuantization(method="awq", bits=4, group_size=128)
    assert gptq.trainable and awq.trainable
    assert gptq.describe() == "GPTQ (4-bit, group size 128)"


def test_other_formats_and_plain_checkpoints() -> None:
    assert checkpoint_quantization(QWEN2) is None
    fp8 = checkpoint_quantization({**QWEN2, "quantization_config": FP8})
    assert fp8 is not None and fp8.method == "fp8" and not fp8.trainable
    bnb = {"load_in_4bit": True, "bnb_4bit_quant_type": "nf4", "quant_method": "bitsandbytes"}
    found = checkpoint_quantization({**QWEN2, "quantization_config": bnb})
    assert found is not None and found.method == "bitsandbytes" and not found.trainable
    # A multimodal checkpoint may declare it in its text_config.
    nested = {"model_type": "qwen3_5", "text_config": {**QWEN2, "quantization_config": AWQ}}
    assert checkpoint_quantization(nested) == CheckpointQuantization("awq", 4, 128)


def test_unquantized_release_names() -> None:
    assert unquantized_name(GPTQ_NAME) == "Qwen/Qwen2.5-7B-Instruct"
    assert unquantized_name("Qwen/Qwen2.5-72B-Instruct-GPTQ-Int8") == "Qwen/Qwen2.5-72B-Instruct"
    assert unquantized_name("Qwen/Qwen2.5-14B-Instruct-AWQ") == "Qwen/Qwen2.5-14B-Instruct"
    assert unquantized_name("/models/Qwen3-8B-AWQ/") == "/models/Qwen3-8B"
    assert unquantized_name("Qwen/Qwen2.5-7B-Instruct") is None


# -- the method decision ---------------------------------------------------------------------


def test_qlora_trains_over_the_checkpoints_own_quantization() -> None:
    found = checkpoint_quantization({**QWEN2, "quantization_config": GPTQ_INT4})
    assert method_problems(found, name=GPTQ_NAME, method="qlora", quantization=qlora()) == []
    fp16 = qlora(compute_dtype="fp16")  # the one setting that applies to GPTQ kernels
    assert method_problems(found, name=GPTQ_NAME, method="qlora", quantization=fp16) == []
    # Nothing to decide for an un-quantized base: bitsandbytes quantizes it as before.
    assert (
        method_problems(None, name="Qwen/Qwen2.5-7B-Instruct", method="lora", quantization=None)
        == []
    )


@pytest.mark.parametrize(
    ("method", "words"),
    [
        ("lora", "method 'lora' loads a bf16 base: set method: qlora"),
        ("full", "packed GPTQ weights can't be fine-tuned in full: set method: qlora"),
    ],
)
def test_lora_and_full_on_a_gptq_base_are_refused_with_the_fix(method: Any, words: str) -> None:
    found = checkpoint_quantization({**QWEN2, "quantization_config": GPTQ_INT4})
    (problem,) = method_problems(found, name=GPTQ_NAME, method=method, quantization=None)
    assert problem.startswith(f"base model {GPTQ_NAME} is already quantized: GPTQ (4-bit")
    assert words in problem
    assert "use the un-quantized model (e.g. Qwen/Qwen2.5-7B-Instruct)" in problem


def test_bitsandbytes_settings_that_contradict_the_checkpoint_are_named() -> None:
    found = checkpoint_quantization({**QWEN2, "quantization_config": AWQ})
    settings = qlora(quant_type="fp4", double_quant=False)
    (problem,) = method_problems(found, name="q-awq", method="qlora", quantization=settings)
    assert "quantization.quant_type='fp4' and quantization.double_quant=False" in problem
    assert "configure bitsandbytes, which can't re-quantize it: remove them" in problem
    assert "only quantization.compute_dtype applies" in problem


def test_untrainable_formats_are_refused_for_every_method() -> None:
    found = checkpoint_quantization({**QWEN2, "quantization_config": FP8})
    for method in ("lora", "qlora", "full"):
        (problem,) = method_problems(
            found, name="Qwen/Qwen3-8B-FP8", method=method, quantization=None
        )
        assert "trains a LoRA over GPTQ or AWQ checkpoints only" in problem
        assert "e.g. Qwen/Qwen3-8B" in problem


def test_merge_into_packed_weights_is_refused_naming_the_unquantized_release() -> None:
    found = checkpoint_quantization({**QWEN2, "quantization_config": GPTQ_INT4})
    problem = merge_problem(found, name=GPTQ_NAME)
    assert problem is not None
    assert "an adapter can't be merged into packed GPTQ weights" in problem
    assert "merge into the un-quantized model (e.g. Qwen/Qwen2.5-7B-Instruct)" in problem
    assert "qwenft merge --base" in problem and "spec.merge.base" in problem
    assert "spec.merge.enabled: false" in problem
    assert merge_problem(None, name="Qwen/Qwen2.5-7B-Instruct") is None


# -- load kwargs -----------------------------------------------------------------------------


def train_config(method: str = "qlora", **quantization: Any) -> TrainConfig:
    return TrainConfig.model_validate(
        {
            "model": {"name_or_path": GPTQ_NAME},
            "data": {"path": "train.jsonl"},
            "method": method,
            "output_dir": "/tmp/out",
            **({"quantization": quantization} if method == "qlora" else {}),
        }
    )


@pytest.mark.parametrize(("quantization", "kind"), [(GPTQ_INT4, "GPTQConfig"), (AWQ, "AwqConfig")])
def test_load_kwargs_of_a_prequantized_base_use_trainable_kernels(
    quantization: dict[str, Any], kind: str
) -> None:
    from qwenft_trainer.modeling import build_load_kwargs
    from transformers import BitsAndBytesConfig

    found = checkpoint_quantization({**QWEN2, "quantization_config": quantization})
    config = train_config(compute_dtype="fp16")
    kwargs = build_load_kwargs(config, device="cuda:0", prequantized=found)
    quant = kwargs["quantization_config"]
    assert type(quant).__name__ == kind and not isinstance(quant, BitsAndBytesConfig)
    assert quant.bits == 4 and str(quant.backend) in {"auto_trainable", "AwqBackend.AUTO_TRAINABLE"}
    assert kwargs["device_map"] == {"": "cuda:0"}
    assert str(kwargs["dtype"]) == "torch.float16"
    # The same config on an un-quantized base still quantizes with bitsandbytes.
    plain = build_load_kwargs(config, device="cuda:0", prequantized=None)
    assert isinstance(plain["quantization_config"], BitsAndBytesConfig)


def test_load_kwargs_refuse_lora_on_a_prequantized_base() -> None:
    from qwenft_trainer.modeling import build_load_kwargs

    found = checkpoint_quantization({**QWEN2, "quantization_config": GPTQ_INT4})
    with pytest.raises(ValueError, match="set method: qlora"):
        build_load_kwargs(train_config("lora"), device=None, prequantized=found)


# -- Qwen1 -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "qwen25", "qwen3"),
    [
        ("Qwen/Qwen-7B-Chat", "Qwen/Qwen2.5-7B-Instruct", "Qwen/Qwen3-8B"),
        ("Qwen/Qwen-14B-Chat", "Qwen/Qwen2.5-14B-Instruct", "Qwen/Qwen3-14B"),
        ("Qwen/Qwen-72B-Chat", "Qwen/Qwen2.5-72B-Instruct", "Qwen/Qwen3-32B"),
        ("Qwen/Qwen-1_8B-Chat", "Qwen/Qwen2.5-1.5B-Instruct", "Qwen/Qwen3-1.7B"),
        ("Qwen/Qwen-7B", "Qwen/Qwen2.5-7B", "Qwen/Qwen3-8B-Base"),
        ("Qwen/Qwen-72B", "Qwen/Qwen2.5-72B", None),
        ("Qwen/Qwen-7B-Chat-Int4", "Qwen/Qwen2.5-7B-Instruct-GPTQ-Int4", None),
        ("Qwen/Qwen-14B-Chat-Int8", "Qwen/Qwen2.5-14B-Instruct-GPTQ-Int8", None),
    ],
)
def test_qwen1_successors_by_name(name: str, qwen25: str, qwen3: str | None) -> None:
    assert successor(QWEN1_7B_CHAT, name=name) == (qwen25, qwen3)


def test_qwen1_successor_of_a_directory_comes_from_its_shape_and_quantization() -> None:
    config_14b = {**QWEN1_7B_CHAT, "hidden_size": 5120, "num_hidden_layers": 40}
    assert successor(config_14b, name="/models/qwen")[0] == "Qwen/Qwen2.5-14B-Instruct"
    int4 = {**QWEN1_7B_CHAT, "quantization_config": {**GPTQ_INT4, "group_size": 128}}
    assert successor(int4, name="/models/qwen")[0] == "Qwen/Qwen2.5-7B-Instruct-GPTQ-Int4"


def test_qwen1_is_recognised_by_model_type_or_architecture_only() -> None:
    assert is_qwen1(QWEN1_7B_CHAT)
    assert is_qwen1({"architectures": ["QWenLMHeadModel"]})
    assert not is_qwen1(QWEN2)
    assert not is_qwen1({"model_type": "qwen3", "architectures": ["Qwen3ForCausalLM"]})
    assert qwen1_problem(QWEN2, name="Qwen/Qwen2.5-7B-Instruct") is None
    message = qwen1_problem(QWEN1_7B_CHAT, name="Qwen/Qwen-7B-Chat")
    assert message is not None
    assert message.startswith("base model Qwen/Qwen-7B-Chat is a Qwen1 checkpoint")
    assert "use Qwen/Qwen2.5-7B-Instruct (or Qwen/Qwen3-8B)" in message


def test_qwen1_is_refused_without_running_its_remote_code(tmp_path: Path) -> None:
    """The directory has no configuration_qwen.py: only config.json is read."""
    base = checkpoint(tmp_path / "Qwen-7B-Chat", QWEN1_7B_CHAT)
    (problem,) = base_model_problems(str(base))
    assert "is a Qwen1 checkpoint" in problem and "Qwen/Qwen2.5-7B-Instruct" in problem


# -- entry points ----------------------------------------------------------------------------


def validate(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, dict[str, Any]]:
    code = qwenft(["data", "validate", str(DATA), "--json", *args])
    return code, json.loads(capsys.readouterr().out)


def test_validator_refuses_qwen1_before_loading_its_tokenizer(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = checkpoint(tmp_path / "Qwen-14B-Chat", {**QWEN1_7B_CHAT, "hidden_size": 5120})
    code, out = validate(capsys, "--model", str(base))
    assert code == 1 and out["ok"] is False
    assert "Qwen1 checkpoint" in out["message"] and "Qwen/Qwen2.5-14B-Instruct" in out["message"]


def test_validator_checks_method_and_merge_target(
    tmp_path: Path, tiny_model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    gptq = checkpoint(
        tmp_path / "Qwen2.5-7B-Instruct-GPTQ-Int4", {**QWEN2, "quantization_config": GPTQ_INT4}
    )
    code, out = validate(capsys, "--model", str(gptq), "--method", "lora")
    assert code == 1 and "set method: qlora" in out["message"]
    code, out = validate(
        capsys, "--model", str(gptq), "--method", "qlora", "--merge-into", str(gptq)
    )
    assert code == 1 and "can't be merged into packed GPTQ weights" in out["message"]
    # A quantized merge target is refused whatever the trained base is.
    code, out = validate(
        capsys, "--model", str(tiny_model_dir), "--method", "lora", "--merge-into", str(gptq)
    )
    assert code == 1 and "spec.merge.base" in out["message"]
    code, out = validate(
        capsys,
        "--model",
        str(tiny_model_dir),
        "--method",
        "lora",
        "--merge-into",
        str(tiny_model_dir),
    )
    assert code == 0 and out["ok"] is True


def test_validator_exits_2_when_config_json_cannot_be_read(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out = validate(capsys, "--model", str(tmp_path))
    assert code == 2 and out["ok"] is False
    assert out["message"].startswith(f"can't read the config.json of {tmp_path}")


@pytest.mark.parametrize(
    ("config", "method", "words"),
    [
        (QWEN1_7B_CHAT, "lora", "is a Qwen1 checkpoint"),
        ({**QWEN2, "quantization_config": GPTQ_INT4}, "full", "set method: qlora"),
    ],
)
def test_trainer_start_refuses_before_any_model_loads(
    tmp_path: Path,
    config: dict[str, Any],
    method: str,
    words: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from qwenft_trainer.train import main

    base = checkpoint(tmp_path / "base", config)  # no tokenizer, no weights: never reached
    termination = tmp_path / "termination-log"
    termination.touch()
    path = write_config(
        tmp_path / "train.yaml",
        base,
        write_dialogues(tmp_path / "train.jsonl", 4),
        tmp_path / "out",
        method=method,
        termination_log=str(termination),
    )
    assert main(["--config", str(path)]) == 1
    assert words in capsys.readouterr().err
    logged = json.loads(termination.read_text())
    assert logged["reason"] == "InvalidConfig" and words in logged["message"]
