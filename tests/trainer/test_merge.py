"""Merging adapters into the tiny model (qwenft_trainer.merge).

Covers, on adapters from a short real trainer run: LoRA merge equivalence (the merged
checkpoint, loaded without peft, gives the logits of base + adapter) with sharded
safetensors, index, tokenizer, chat template and generation config carried over; a Q-LoRA
adapter (detected from the trainer's summary.json) merged into the un-quantized base in
bf16, said so in merge_report.json; a hub base fetched at ``--revision``. On PEFT-built
adapters: a fully trained lm_head on a model with tied embeddings; failures with a clear
message, exit code 1 and no output or partial directory left behind: missing base,
vocabulary and architecture mismatch, unreadable adapter, not enough disk space, an
existing output, and a merge whose logits disagree.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from qwenft_trainer import merge as merge_module
from qwenft_trainer.merge import MergeOptions, main, merge
from qwenft_trainer.merge_checks import MergeError
from qwenft_trainer.tiny import TinyModelSpec, build_tiny_qwen
from transformers import AutoModelForCausalLM, AutoTokenizer

PROMPT = [{"role": "user", "content": "Explain LoRA in one sentence. 你好"}]


def _reference_logits(base: Path, adapter: Path, ids: torch.Tensor) -> torch.Tensor:
    from peft import PeftModel

    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), str(adapter))
    with torch.inference_mode():
        return model.eval()(input_ids=ids).logits


def _prompt_ids(model_dir: Path) -> torch.Tensor:
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    text = tokenizer.apply_chat_template(PROMPT, tokenize=False, add_generation_prompt=True)
    return tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"]


def _leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir())


@pytest.mark.slow
def test_lora_merge_matches_base_plus_adapter(
    trained_adapter: Callable[..., Path], tiny_model_dir: Path, tmp_path: Path
) -> None:
    adapter = trained_adapter("lora")
    output = tmp_path / "merged"
    report = merge(MergeOptions(adapter=adapter, output=output, max_shard_size="150KB"))

    assert report.passed and report.method == "lora"
    assert report.dtype == "float32"  # the tiny base's own dtype
    assert report.max_abs_diff <= report.tolerance
    assert report.adapter_effect > 100 * report.tolerance, "probe must see the adapter"
    on_disk = json.loads((output / "merge_report.json").read_text())
    assert on_disk["passed"] is True and on_disk["max_abs_diff"] == report.max_abs_diff

    index = json.loads((output / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 1 and all((output / shard).is_file() for shard in shards)
    assert not list(output.glob("adapter_*")), "the merged model must not need peft"
    for name in ("tokenizer.json", "generation_config.json", "config.json"):
        assert (output / name).is_file(), name
    base_tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    merged_tokenizer = AutoTokenizer.from_pretrained(output)
    assert merged_tokenizer.chat_template == base_tokenizer.chat_template
    base_gen = json.loads((tiny_model_dir / "generation_config.json").read_text())
    merged_gen = json.loads((output / "generation_config.json").read_text())
    assert merged_gen["eos_token_id"] == base_gen["eos_token_id"]

    ids = _prompt_ids(tiny_model_dir)
    merged_model = AutoModelForCausalLM.from_pretrained(output).eval()
    with torch.inference_mode():
        merged_logits = merged_model(input_ids=ids).logits
        base_logits = AutoModelForCausalLM.from_pretrained(tiny_model_dir)(input_ids=ids).logits
    reference = _reference_logits(tiny_model_dir, adapter, ids)
    assert torch.allclose(merged_logits, reference, atol=1e-4)
    assert not torch.allclose(merged_logits, base_logits, atol=1e-2)


@pytest.mark.slow
def test_qlora_adapter_merges_into_unquantized_bf16_base(
    trained_adapter: Callable[..., Path], tmp_path: Path
) -> None:
    adapter = trained_adapter("qlora")  # the trainer's summary.json says method: qlora
    output = tmp_path / "merged"
    assert main(["--adapter", str(adapter), "--output", str(output), "--dtype", "bf16"]) == 0

    report = json.loads((output / "merge_report.json").read_text())
    assert report["method"] == "qlora"
    assert report["dtype"] == "bfloat16"
    assert report["merged_into"] == "un-quantized base in bfloat16"
    assert any("never into 4-bit weights" in note for note in report["notes"])
    assert report["passed"] and report["max_abs_diff"] <= report["tolerance"]
    config = json.loads((output / "config.json").read_text())
    assert config["dtype"] == "bfloat16"
    assert "quantization_config" not in config
    assert AutoModelForCausalLM.from_pretrained(output).dtype == torch.bfloat16


def test_method_flag_overrides_detection(make_adapter, tmp_path: Path) -> None:
    adapter = make_adapter("merge-lora", r=8)
    report = merge(MergeOptions(adapter=adapter, output=tmp_path / "m", method="qlora"))
    assert report.method == "qlora" and report.notes


def test_trained_lm_head_on_tied_embeddings_survives_merge(
    make_adapter, tiny_model_dir: Path, tmp_path: Path
) -> None:
    adapter = make_adapter("merge-head", r=8, modules_to_save=["lm_head"])
    output = tmp_path / "merged"
    report = merge(MergeOptions(adapter=adapter, output=output))
    assert report.passed
    ids = _prompt_ids(tiny_model_dir)
    with torch.inference_mode():
        merged_logits = AutoModelForCausalLM.from_pretrained(output)(input_ids=ids).logits
    assert torch.allclose(merged_logits, _reference_logits(tiny_model_dir, adapter, ids), atol=1e-4)


def test_missing_base_fails_clearly(
    make_adapter, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    adapter = make_adapter("merge-lora", r=8)
    output = tmp_path / "merged"
    rc = main(
        ["--adapter", str(adapter), "--base", str(tmp_path / "nope"), "--output", str(output)]
    )
    assert rc == 1
    assert "base model" in capsys.readouterr().err
    assert _leftovers(tmp_path) == []
    # A hub id that isn't cached, with the hub unreachable (HF_HUB_OFFLINE=1 in tests).
    with pytest.raises(MergeError, match="can't be fetched from the hub"):
        merge(MergeOptions(adapter=adapter, output=output, base="qwenft-tests/no-such-model"))
    assert _leftovers(tmp_path) == []


def test_hub_base_is_downloaded_at_the_pinned_revision(
    make_adapter, tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--revision`` reaches the hub download, so the merge reads the snapshot trained on."""
    import huggingface_hub

    asked: list[dict[str, object]] = []

    def snapshot(**kwargs: object) -> str:
        asked.append(kwargs)
        return str(tiny_model_dir)  # the hub is offline in tests: this stands for its cache

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot)
    adapter = make_adapter("merge-lora", r=8)
    args = ["--adapter", str(adapter), "--output", str(tmp_path / "merged")]
    assert main([*args, "--base", "Qwen/Qwen2.5-7B-Instruct", "--revision", "0123abc"]) == 0
    assert [(a["repo_id"], a["revision"]) for a in asked] == [
        ("Qwen/Qwen2.5-7B-Instruct", "0123abc")
    ]
    report = json.loads((tmp_path / "merged" / "merge_report.json").read_text())
    assert report["base"] == str(tiny_model_dir) and report["passed"]


@pytest.fixture(scope="module")
def other_bases(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("other-bases")
    return {
        "vocab": build_tiny_qwen(root / "vocab", TinyModelSpec(vocab_size=448)),
        "arch": build_tiny_qwen(root / "arch", TinyModelSpec(hidden_size=32, num_hidden_layers=1)),
    }


def test_vocabulary_mismatch_fails_before_loading(
    make_adapter, other_bases: dict[str, Path], tmp_path: Path
) -> None:
    adapter = make_adapter("merge-head", r=8, modules_to_save=["lm_head"])
    with pytest.raises(MergeError, match="vocabulary size") as err:
        merge(MergeOptions(adapter=adapter, output=tmp_path / "m", base=str(other_bases["vocab"])))
    assert "does not match base" in str(err.value)
    assert _leftovers(tmp_path) == []


def test_architecture_mismatch_names_the_weights(
    make_adapter, other_bases: dict[str, Path], tmp_path: Path
) -> None:
    adapter = make_adapter("merge-lora", r=8)
    with pytest.raises(MergeError) as err:
        merge(MergeOptions(adapter=adapter, output=tmp_path / "m", base=str(other_bases["arch"])))
    message = str(err.value)
    assert "expects size 64, base has 32" in message
    assert _leftovers(tmp_path) == []


def test_unreadable_adapter(make_adapter, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(MergeError, match=r"unreadable adapter: .*adapter_config\.json not found"):
        merge(MergeOptions(adapter=empty, output=tmp_path / "m"))

    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    source = make_adapter("merge-lora", r=8)
    (corrupt / "adapter_config.json").write_bytes((source / "adapter_config.json").read_bytes())
    (corrupt / "adapter_model.safetensors").write_bytes(b"\x10\x00\x00\x00garbage")
    with pytest.raises(MergeError, match="not a valid safetensors file"):
        merge(MergeOptions(adapter=corrupt, output=tmp_path / "m"))
    assert not (tmp_path / "m").exists()


def test_not_enough_disk_space(
    make_adapter,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    adapter = make_adapter("merge-lora", r=8)
    output = tmp_path / "merged"
    monkeypatch.setenv(merge_module.RESERVE_ENV, str(10**18))
    assert main(["--adapter", str(adapter), "--output", str(output)]) == 1
    assert "not enough disk space" in capsys.readouterr().err
    assert _leftovers(tmp_path) == []

    with pytest.raises(MergeError, match=r"only 0\.00 GiB is free"):
        merge(MergeOptions(adapter=adapter, output=output), probe=lambda _: 1000)
    assert _leftovers(tmp_path) == []


def test_existing_output_needs_overwrite(make_adapter, tmp_path: Path) -> None:
    adapter = make_adapter("merge-lora", r=8)
    output = tmp_path / "merged"
    output.mkdir()
    (output / "keep.txt").write_text("x")
    with pytest.raises(MergeError, match="--overwrite"):
        merge(MergeOptions(adapter=adapter, output=output))
    merge(MergeOptions(adapter=adapter, output=output, overwrite=True))
    assert not (output / "keep.txt").exists() and (output / "merge_report.json").is_file()
    assert _leftovers(tmp_path) == ["merged"]


def test_disagreeing_merge_fails_and_leaves_nothing(
    make_adapter, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from peft.tuners.lora import LoraModel

    # A merge that silently drops the adapter: the verification must catch it.
    monkeypatch.setattr(LoraModel, "merge_and_unload", lambda self, **_: self.unload())
    adapter = make_adapter("merge-lora", r=8)
    with pytest.raises(MergeError, match="verification failed") as err:
        merge(MergeOptions(adapter=adapter, output=tmp_path / "merged"))
    assert '"passed": false' in str(err.value)
    assert _leftovers(tmp_path) == []
