"""The attention kernel a run trains with (qwenft_trainer.attention) and the batches it gets.

Covers:
- the decision, pure, for each case: sdpa on the CPU; flex_attention on CUDA for the models
  transformers can run with it (Qwen2, Qwen3, Qwen3-MoE, read from the real model classes);
  flash_attention_2 only where flash-attn is installed and the model has no flex path
  (Qwen3-Next, Qwen3.5), and never in fp32; sdpa with every skipped kernel named otherwise;
  an explicit ``training.attention`` honoured, or refused naming the field and the fix;
- what this process can run (torch 2.15 has flex_attention; flash-attn needs CUDA), and the
  concrete class each tiny architecture loads as;
- the batch layout each kernel needs: flex_attention packs padded rows all padded to
  max_seq_length (one shape, one compile), unpacked batches padded to max_seq_length too;
  flash-attention packs flattened even attention-only models; a row longer than the fixed
  width is an error;
- the model loads with the choice (``build_load_kwargs``), the validator reports it (and
  ``unknown`` with the reason for an explicit kernel that could not load), and
  ``choose_attention`` reads a real tiny checkpoint (sdpa on this CPU, an impossible request
  refused before any weight loads);
- flex_attention itself, run on the CPU (slow: its kernels compile): the start-up probe
  finds packed = separate logits through it, those logits equal sdpa's to 1e-4, and the
  kernel receives a BlockMask, never a dense 4-D mask;
- GPU (skipped here): on CUDA ``auto`` picks flex_attention for qwen2 / qwen3 / qwen3_moe;
  the batch a run trains with gives every sample its own logits and loss (fp32, 1e-4 of the
  largest logit) with no 4-D tensor mask reaching the kernel.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from qwenft_trainer import architectures, attention
from qwenft_trainer.attention import AttentionError, decide_attention, row_length
from qwenft_trainer.config import TrainConfig
from qwenft_trainer.packing import PackedCollator, PaddingCollator
from qwenft_trainer.packing_mode import decide_packing

ATTENTION_ONLY = ("qwen2", "qwen3", "qwen3_moe")
NO_FLEX = ("qwen3_next", "qwen3_5", "qwen3_5_moe")
ALL_HERE = {"sdpa": None, "flex_attention": None, "flash_attention_2": None}
NO_FLASH = {**ALL_HERE, "flash_attention_2": "the flash-attn package is not installed"}


def supported(class_name: str) -> frozenset[str]:
    import transformers

    return attention.supported_implementations(getattr(transformers, class_name))


def test_the_cpu_trains_with_sdpa() -> None:
    choice = decide_attention(
        requested="auto",
        cuda=False,
        precision="bf16",
        supported=supported("Qwen2ForCausalLM"),
        problems=ALL_HERE,
    )
    assert choice.implementation == "sdpa"
    assert choice.reason.startswith("no CUDA device")
    assert choice.log_line() == f"attention: sdpa ({choice.reason})"


@pytest.mark.parametrize(
    "class_name", ["Qwen2ForCausalLM", "Qwen3ForCausalLM", "Qwen3MoeForCausalLM"]
)
def test_cuda_attention_only_models_train_with_flex_attention(class_name: str) -> None:
    for precision in ("bf16", "fp32"):
        choice = decide_attention(
            requested="auto",
            cuda=True,
            precision=precision,  # type: ignore[arg-type]
            supported=supported(class_name),
            problems=NO_FLASH,
        )
        assert choice.implementation == "flex_attention"
        assert "block-sparse document mask" in choice.reason


@pytest.mark.parametrize(
    "class_name",
    ["Qwen3NextForCausalLM", "Qwen3_5ForConditionalGeneration", "Qwen3_5MoeForCausalLM"],
)
def test_models_without_flex_take_flash_attention_where_installed_else_sdpa(
    class_name: str,
) -> None:
    def choose(precision: str, problems: dict[str, str | None]) -> attention.AttentionChoice:
        return decide_attention(
            requested="auto",
            cuda=True,
            precision=precision,  # type: ignore[arg-type]
            supported=supported(class_name),
            problems=problems,  # type: ignore[arg-type]
        )

    flash = choose("bf16", ALL_HERE)
    assert flash.implementation == "flash_attention_2"
    assert "cu_seqlens" in flash.reason
    missing = choose("bf16", NO_FLASH)
    assert missing.implementation == "sdpa"
    assert "not flex_attention: transformers has no flex_attention path" in missing.reason
    assert "not flash_attention_2: the flash-attn package is not installed" in missing.reason
    fp32 = choose("fp32", ALL_HERE)
    assert fp32.implementation == "sdpa"
    assert "flash_attention_2 runs in bf16 or fp16 only, not fp32" in fp32.reason


def test_torch_without_flex_attention_falls_back_to_sdpa() -> None:
    choice = decide_attention(
        requested="auto",
        cuda=True,
        precision="bf16",
        supported=supported("Qwen2ForCausalLM"),
        problems={**NO_FLASH, "flex_attention": "this torch has no flex_attention"},
    )
    assert choice.implementation == "sdpa"
    assert "not flex_attention: this torch has no flex_attention" in choice.reason


def test_an_explicit_setting_is_honoured_or_refused_with_the_fix() -> None:
    def explicit(requested: str, **facts: Any) -> attention.AttentionChoice:
        return decide_attention(
            requested=requested,  # type: ignore[arg-type]
            cuda=facts.get("cuda", True),
            precision=facts.get("precision", "bf16"),
            supported=supported(facts.get("model", "Qwen2ForCausalLM")),
            problems=facts.get("problems", NO_FLASH),
        )

    sdpa = explicit("sdpa")
    assert (sdpa.implementation, sdpa.reason) == ("sdpa", "training.attention is sdpa")
    on_cpu = explicit("flex_attention", cuda=False)  # flex runs on the CPU too (compiled)
    assert on_cpu.implementation == "flex_attention"
    with pytest.raises(AttentionError, match="the flash-attn package is not installed") as err:
        explicit("flash_attention_2")
    assert "training.attention is flash_attention_2" in str(err.value)
    assert "set training.attention to auto (or sdpa)" in str(err.value)
    with pytest.raises(AttentionError, match="no flex_attention path for this model"):
        explicit("flex_attention", model="Qwen3NextForCausalLM")
    with pytest.raises(AttentionError, match="bf16 or fp16 only, not fp32"):
        explicit("flash_attention_2", precision="fp32", problems=ALL_HERE)


def test_an_unknown_model_class_is_assumed_to_run_sdpa_only() -> None:
    assert attention.supported_implementations(None) == frozenset({"sdpa"})
    assert supported("Qwen2ForCausalLM") >= {"sdpa", "flex_attention", "flash_attention_2"}
    assert "flex_attention" not in supported("Qwen3NextForCausalLM")


def test_what_this_cpu_process_can_run() -> None:
    problems = attention.kernel_problems_here(cuda=False)
    assert problems["sdpa"] is None
    assert problems["flex_attention"] is None  # torch 2.15 ships FlexAttention
    assert problems["flash_attention_2"] == "flash-attn needs a CUDA device"


@pytest.mark.parametrize(
    ("arch", "class_name"),
    [
        ("qwen2", "Qwen2ForCausalLM"),
        ("qwen3_moe", "Qwen3MoeForCausalLM"),
        ("qwen3_next", "Qwen3NextForCausalLM"),
        ("qwen3_5", "Qwen3_5ForConditionalGeneration"),
    ],
)
def test_the_concrete_class_of_each_architecture(
    arch: str, class_name: str, tiny_arch_dir: Callable[[str], Path]
) -> None:
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(str(tiny_arch_dir(arch)))
    assert architectures.concrete_model_class(config).__name__ == class_name


def test_each_kernel_gets_the_packing_layout_it_needs() -> None:
    config = {"layer_types": ["full_attention", "full_attention"]}

    def mode(implementation: str) -> str:
        decision = decide_packing(
            config, requested=True, attn_implementation=implementation, linear_kernel_problem=None
        )
        return decision.mode

    assert mode("sdpa") == "padded_rows"
    assert mode("flex_attention") == "padded_rows"
    assert (
        "block-sparse document mask"
        in decide_packing(
            config, requested=True, attn_implementation="flex_attention", linear_kernel_problem=None
        ).reason
    )
    # flash-attention sees boundaries only in a flattened batch: rows of [B>1, L] would leak.
    assert mode("flash_attention_2") == "flattened_varlen"
    assert row_length("flex_attention", 2048) == 2048
    assert row_length("sdpa", 2048) is None
    assert row_length("flash_attention_2", 2048) is None


def packed_row(lengths: list[int]) -> dict[str, list[int]]:
    ids = [7 + i for i in range(sum(lengths))]
    return {
        "input_ids": ids,
        "labels": ids,
        "position_ids": [p for n in lengths for p in range(n)],
    }


def test_fixed_width_rows_for_kernels_compiled_per_shape() -> None:
    collate = PackedCollator(pad_token_id=0, row_length=32)
    for rows in ([packed_row([5, 4])], [packed_row([10]), packed_row([3, 3, 3])]):
        batch = collate(rows)
        assert batch["input_ids"].shape == (len(rows), 32)
        used = len(rows[0]["input_ids"])
        assert batch["position_ids"][0, used:].tolist() == list(range(32 - used))  # pad segment
        assert batch["labels"][0, used:].eq(-100).all()
    longest = PackedCollator(pad_token_id=0)([packed_row([5, 4])])
    assert longest["input_ids"].shape == (1, 9)
    with pytest.raises(ValueError, match="row of 40 tokens is longer than the row length 32"):
        collate([packed_row([40])])
    with pytest.raises(ValueError, match="pass flatten or row_length"):
        PackedCollator(flatten=True, row_length=32)


def train_config(model: Path, **training: Any) -> TrainConfig:
    return TrainConfig.model_validate(
        {
            "model": {"name_or_path": str(model)},
            "data": {"path": "train.jsonl"},
            "output_dir": "/tmp/out",
            "training": {"max_seq_length": 64, **training},
        }
    )


def test_unpacked_batches_have_one_width_under_flex_attention(tiny_model_dir: Path) -> None:
    from qwenft_trainer.modeling import load_tokenizer
    from qwenft_trainer.packing_mode import build_collator

    config = train_config(tiny_model_dir, packing=False)
    tokenizer = load_tokenizer(config.model)
    items = [{"input_ids": [5, 6, 7], "labels": [5, 6, 7]}, {"input_ids": [8], "labels": [8]}]
    fixed = build_collator(config, tokenizer, "off", row_length=row_length("flex_attention", 64))
    assert isinstance(fixed, PaddingCollator)
    assert fixed(items)["input_ids"].shape == (2, 64)
    assert build_collator(config, tokenizer, "off")(items)["input_ids"].shape == (2, 3)
    packed = build_collator(config, tokenizer, "padded_rows", row_length=64)
    assert packed([packed_row([3, 2])])["input_ids"].shape == (1, 64)


def test_the_model_loads_with_the_choice(tiny_model_dir: Path) -> None:
    from qwenft_trainer.modeling import build_load_kwargs, choose_attention

    config = train_config(tiny_model_dir, precision="fp32")
    choice = choose_attention(config, cuda=False)
    assert choice.implementation == "sdpa"
    kwargs = build_load_kwargs(config, device=None, attn_implementation="flex_attention")
    assert kwargs["attn_implementation"] == "flex_attention"
    assert build_load_kwargs(config, device=None)["attn_implementation"] == "sdpa"
    refused = train_config(tiny_model_dir, attention="flash_attention_2")
    with pytest.raises(AttentionError, match="flash-attn needs a CUDA device"):
        choose_attention(refused, cuda=False)


def test_qlora_attention_computes_in_the_quantization_dtype(tiny_model_dir: Path) -> None:
    from qwenft_trainer.modeling import attention_precision

    config = TrainConfig.model_validate(
        {
            "model": {"name_or_path": str(tiny_model_dir)},
            "data": {"path": "train.jsonl"},
            "output_dir": "/tmp/out",
            "method": "qlora",
            "training": {"precision": "bf16"},
            "quantization": {"compute_dtype": "fp16"},
        }
    )
    assert attention_precision(config) == "fp16"
    assert attention_precision(train_config(tiny_model_dir, precision="fp32")) == "fp32"


@pytest.mark.parametrize(("arch", "kernel"), [("qwen2", "flex_attention"), ("qwen3_next", "sdpa")])
def test_the_validator_reports_the_cuda_kernel(
    arch: str, kernel: str, tiny_arch_dir: Callable[[str], Path], capsys: pytest.CaptureFixture[str]
) -> None:
    from qwenft_operator.cli import main as qwenft

    data = Path(__file__).parent / "data" / "mixed.jsonl"
    args = ["data", "validate", str(data), "--model", str(tiny_arch_dir(arch))]
    capsys.readouterr()
    assert qwenft([*args, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["attention"] == kernel
    if kernel == "flex_attention":
        assert report["packing"] == "padded_rows"
        assert "block-sparse document mask" in report["packing_reason"]
    else:  # no flex path in transformers, no flash-attn here
        assert "not flex_attention" in report["attention_reason"]
    assert qwenft(args) == 0
    assert (
        f"  attention        {kernel} ({report['attention_reason']})\n" in capsys.readouterr().out
    )


def test_the_validator_reports_a_kernel_the_run_could_not_load(
    tiny_model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from qwenft_operator.cli import main as qwenft

    data = Path(__file__).parent / "data" / "mixed.jsonl"
    args = ["data", "validate", str(data), "--model", str(tiny_model_dir), "--json"]
    capsys.readouterr()
    assert qwenft([*args, "--attention", "flash_attention_2"]) == 0  # a prediction, not a check
    report = json.loads(capsys.readouterr().out)
    assert (report["attention"], report["packing"]) == ("unknown", "unknown")
    assert "the flash-attn package is not installed" in report["attention_reason"]
    assert qwenft([*args, "--attention", "sdpa"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["attention"], report["packing"]) == ("sdpa", "padded_rows")


class MaskRecorder:
    """Stands in front of the real flex_attention function and records what mask it gets."""

    def __init__(self, real: Callable[..., Any]) -> None:
        self.real = real
        self.masks: list[Any] = []

    def __call__(self, module: Any, query: Any, key: Any, value: Any, mask: Any, **kw: Any) -> Any:
        self.masks.append(mask)
        return self.real(module, query, key, value, mask, **kw)


def record_flex_masks(monkeypatch: pytest.MonkeyPatch) -> MaskRecorder:
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    mapping = ALL_ATTENTION_FUNCTIONS._global_mapping
    recorder = MaskRecorder(mapping["flex_attention"])
    monkeypatch.setitem(mapping, "flex_attention", recorder)
    return recorder


def assert_only_block_masks(recorder: MaskRecorder) -> None:
    from torch.nn.attention.flex_attention import BlockMask

    assert recorder.masks, "flex_attention never ran"
    kinds = {type(mask).__name__ for mask in recorder.masks}
    assert all(isinstance(mask, BlockMask) for mask in recorder.masks), kinds


@pytest.mark.slow
def test_flex_attention_packs_exactly_with_a_block_mask_on_the_cpu(
    tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The CUDA path's mechanics on the CPU: one packed shape, probe, BlockMask only."""
    import torch
    from qwenft_trainer.packing_mode import configure_model_for_packing
    from transformers import AutoModelForCausalLM

    def load(kind: str) -> Any:
        return AutoModelForCausalLM.from_pretrained(
            str(tiny_model_dir), attn_implementation=kind, dtype=torch.float32
        )

    recorder = record_flex_masks(monkeypatch)
    model = load("flex_attention")
    decision = configure_model_for_packing(model, requested=True, pad_token_id=0, row_length=32)
    assert decision.mode == "padded_rows", decision.reason
    assert "block-sparse document mask" in decision.reason
    assert "start-up probe: packed = separate logits" in decision.reason
    assert_only_block_masks(recorder)
    # The probe's packed row, through flex_attention, against sdpa's dense mask.
    batch = PackedCollator(pad_token_id=0, row_length=32)([packed_row([13, 11])])
    with torch.no_grad():
        flex = model(**batch, use_cache=False).logits
        sdpa = load("sdpa")(**batch, use_cache=False).logits
    torch.testing.assert_close(flex[:, :24], sdpa[:, :24], atol=1e-4, rtol=0)


@pytest.mark.gpu
@pytest.mark.parametrize("arch", ATTENTION_ONLY)
def test_cuda_packed_rows_are_exact_under_flex_attention(
    arch: str, tiny_arch_dir: Callable[[str], Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch
    from qwenft_trainer.data import tokenize_all
    from qwenft_trainer.formats import load_conversations
    from qwenft_trainer.packing import build_features
    from qwenft_trainer.packing_mode import build_packing_collator, configure_model_for_packing
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    path = tiny_arch_dir(arch)
    model_class = architectures.concrete_model_class(AutoConfig.from_pretrained(str(path)))
    choice = decide_attention(
        requested="auto",
        cuda=True,
        precision="fp32",
        supported=attention.supported_implementations(model_class),
        problems=attention.kernel_problems_here(cuda=True),
    )
    assert choice.implementation == "flex_attention", choice.reason
    recorder = record_flex_masks(monkeypatch)
    model = AutoModelForCausalLM.from_pretrained(
        str(path), attn_implementation=choice.implementation, dtype=torch.float32
    ).to("cuda")
    width = 128
    decision = configure_model_for_packing(
        model, requested=True, pad_token_id=0, device="cuda", row_length=width
    )
    assert decision.mode == "padded_rows", decision.reason
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    convs = load_conversations(Path(__file__).parent / "data" / "dialogue_sequence.jsonl")
    samples = tokenize_all(convs, tokenizer, width)
    features = build_features(samples, width, packing=True)
    collate = build_packing_collator(decision.mode, pad_token_id=0, row_length=width)
    batch = {k: v.to("cuda") for k, v in collate(features).items()}
    assert batch["input_ids"].shape[1] == width and batch["input_ids"].shape[0] < len(samples)
    recorder.masks.clear()
    with torch.no_grad():
        packed = model(**batch, use_cache=False)
    assert_only_block_masks(recorder)
    positions = batch["position_ids"]
    worst, scale, checked = 0.0, 1.0, 0
    with torch.no_grad():
        for row in range(positions.shape[0]):
            starts = (positions[row] == 0).nonzero().flatten().tolist()
            for start, end in zip(starts, [*starts[1:], width], strict=True):
                if batch["labels"][row, start:end].eq(-100).all():
                    continue  # the row's pad segment
                ids = batch["input_ids"][row, start:end][None]
                alone = model(input_ids=ids, use_cache=False).logits[0]
                worst = max(worst, float((packed.logits[row, start:end] - alone).abs().max()))
                scale = max(scale, float(alone.abs().max()))
                checked += 1
    assert checked == len(samples)
    assert worst <= 1e-4 * scale, (worst, scale)
