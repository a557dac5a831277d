"""Packing exact on every Qwen architecture, or off with a reason (qwenft_trainer.packing_mode).

Covers, on the tiny model of each architecture (qwen2, qwen3, qwen3_moe, qwen3_next, qwen3_5,
qwen3_5_moe) with wide initial weights (initializer_range 0.5, so any leak across samples
moves the numbers far beyond rounding), fp32 on the CPU:
- the decision: attention-only architectures pack into padded rows; those with Gated
  DeltaNet (linear-attention) layers train unpacked here, and the reason names the layers and
  the missing kernel; packing not asked for, or an attention kernel that can't see sample
  boundaries, is off with its reason;
- the batch a run trains with (packed rows where packing is on, padded samples where off)
  gives every sample the logits it has alone, and the same loss (per trained token, as the
  Trainer counts it with num_items_in_batch) and gradients of all weights as the samples one
  by one, to 1e-5 absolute + 1e-5 relative (wide-init logits reach ~20, where fp32 rounding
  of the two layouts differs by up to 1.2e-5; a leak moves them by > 1e-2);
- where packing is off, the start-up probe sees the leak packing would cause, in padded rows
  (logits change by > 100x the tolerance) and flattened (the fallback kernel refuses
  cu_seqlens); when the rules wrongly call a model packable (qwen3_next, in either mode),
  the probe turns packing off and says why;
- one optimizer step over a whole dataset through the trainer (``qwenft train``) gives the
  same loss and grad norm with training.packing on and off, to 1e-5 relative, and the mode
  and reason, and the attention kernel (sdpa on the CPU) and its reason, reach summary.json,
  the log and the train_start line; qwen3_next packed with
  the rules and the probe fooled shows how far a leak moves that step (loss 7e-4 relative,
  grad norm 1e-2);
- under ZeRO-3 (weights partitioned, no probe) attention-only models pack unprobed and
  linear-attention ones train unpacked;
- ``qwenft data validate`` names each architecture and the packing mode it will get, says
  unknown (and why) when the model's config can't be read, and off with --no-packing;
- GPU (skipped here): with flash-linear-attention on CUDA, and the attention kernel a CUDA
  run picks for them (sdpa, or flash_attention_2 where installed: transformers has no
  flex_attention path for them), the rules pick flattened packing
  for the linear-attention architectures, and whatever the probe then decides, the batch
  trained on gives every sample its own logits (1e-4); fla's gated delta rule with
  cu_seqlens equals each segment run alone.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from qwenft_trainer import packing_mode
from qwenft_trainer.data import TokenizedSample
from qwenft_trainer.packing import PaddingCollator, build_features
from qwenft_trainer.packing_mode import (
    build_packing_collator,
    configure_model_for_packing,
    decide_packing,
    probe_packing,
)
from qwenft_trainer.tiny import TINY_ARCHS, TinyModelSpec, build_tiny_qwen
from trainrun import InProcessRun, events, write_config, write_dialogues

# What each architecture gets on a CPU with transformers' PyTorch kernels.
MODE_ON_CPU = {
    "qwen2": "padded_rows",
    "qwen3": "padded_rows",
    "qwen3_moe": "padded_rows",
    "qwen3_next": "off",
    "qwen3_5": "off",
    "qwen3_5_moe": "off",
}
LINEAR_ATTENTION_ARCHS = [arch for arch, mode in MODE_ON_CPU.items() if mode == "off"]
DATA_DIR = Path(__file__).parent / "data"
MAX_LEN = 128
TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def wide_arch_dir(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """``wide_arch_dir(arch)``: the tiny model of ``arch`` with initializer_range 0.5."""
    built: dict[str, Path] = {}

    def build(arch: str) -> Path:
        if arch not in built:
            spec = TinyModelSpec(arch=arch, initializer_range=0.5)  # type: ignore[arg-type]
            built[arch] = build_tiny_qwen(tmp_path_factory.mktemp(f"wide-{arch}"), spec)
        return built[arch]

    return build


def load(path: Path) -> Any:
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(
        str(path), attn_implementation="sdpa", dtype=torch.float32
    )


def tokenized(path: Path) -> tuple[Any, list[TokenizedSample]]:
    from qwenft_trainer.data import tokenize_all
    from qwenft_trainer.formats import load_conversations
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(path))
    convs = load_conversations(DATA_DIR / "dialogue_sequence.jsonl") + load_conversations(
        DATA_DIR / "sharegpt.json"
    )
    return tokenizer, tokenize_all(convs, tokenizer, MAX_LEN)


def test_tiny_arch_dir_builds_each_architecture_once(tiny_arch_dir: Callable[[str], Path]) -> None:
    first = tiny_arch_dir("qwen3_next")
    assert tiny_arch_dir("qwen3_next") == first
    assert json.loads((first / "config.json").read_text())["model_type"] == "qwen3_next"
    with pytest.raises(ValueError, match="unknown tiny arch 'qwen1'"):
        tiny_arch_dir("qwen1")


@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_the_rules_pack_attention_and_name_why_linear_attention_is_not(
    arch: str, tiny_arch_dir: Callable[[str], Path]
) -> None:
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(str(tiny_arch_dir(arch)))  # Qwen3.5: text_config
    decision = decide_packing(
        config,
        requested=True,
        attn_implementation="sdpa",
        linear_kernel_problem=packing_mode.linear_kernel_problem_here(cuda=False),
    )
    assert decision.mode == MODE_ON_CPU[arch]
    if arch in LINEAR_ATTENTION_ARCHS:
        assert "1 of 2 layers are linear attention" in decision.reason
        assert "needs a CUDA device" in decision.reason
        kernels_here = decide_packing(
            config, requested=True, attn_implementation="sdpa", linear_kernel_problem=None
        )
        assert kernels_here.mode == "flattened_varlen"
        assert "cu_seqlens" in kernels_here.reason
    else:
        assert "attention layers only" in decision.reason
    unasked = decide_packing(
        config, requested=False, attn_implementation="sdpa", linear_kernel_problem=None
    )
    assert (unasked.mode, unasked.reason) == ("off", "training.packing is false")


def test_attention_kernels_that_ignore_packing_turn_it_off() -> None:
    decision = decide_packing(
        {"layer_types": ["full_attention"]},
        requested=True,
        attn_implementation="paged_attention",
        linear_kernel_problem=None,
    )
    assert decision.mode == "off"
    assert "'paged_attention' can't keep packed samples apart" in decision.reason


def test_layer_types_nobody_can_pack_turn_it_off() -> None:
    config = {"text_config": {"layer_types": ["mamba", "full_attention"]}}
    decision = decide_packing(
        config, requested=True, attn_implementation="sdpa", linear_kernel_problem=None
    )
    assert decision.mode == "off"
    assert "mamba carry state along the row" in decision.reason


def training_batch(mode: str, samples: list[TokenizedSample], tokenizer: Any) -> dict[str, Any]:
    """All samples in one batch, the way a run with packing ``mode`` batches them."""
    features = build_features(samples, MAX_LEN, packing=mode != "off")
    if mode == "off":
        return dict(PaddingCollator(tokenizer)(features))
    batch: dict[str, Any] = build_packing_collator(mode, pad_token_id=tokenizer.pad_token_id)(
        features
    )
    return batch


def segments(batch: dict[str, Any]) -> list[tuple[int, int, int]]:
    """(row, start, end) of every real sample in a batch (packed or padded)."""
    found = []
    if "attention_mask" in batch:
        for row, mask in enumerate(batch["attention_mask"].tolist()):
            found.append((row, 0, sum(mask)))
        return found
    positions = batch["position_ids"]
    for row in range(positions.shape[0]):
        starts = (positions[row] == 0).nonzero().flatten().tolist()
        for start, end in zip(starts, [*starts[1:], positions.shape[1]], strict=True):
            if batch["labels"][row, start:end].ne(-100).any():
                found.append((row, start, end))
    return found


@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_the_training_batch_gives_per_sample_logits_loss_and_gradients(
    arch: str, wide_arch_dir: Callable[[str], Path]
) -> None:
    import torch

    path = wide_arch_dir(arch)
    tokenizer, samples = tokenized(path)
    model = load(path)
    decision = configure_model_for_packing(
        model, requested=True, pad_token_id=tokenizer.pad_token_id
    )
    assert decision.mode == MODE_ON_CPU[arch], decision.reason
    batch = training_batch(decision.mode, samples, tokenizer)
    if decision.packed:
        assert batch["input_ids"].shape[0] < len(samples), "some rows hold several samples"
    # What the Trainer divides by: the labels it will predict (shifted by one).
    count = int(batch["labels"][..., 1:].ne(-100).sum())
    assert count == sum(sum(1 for x in s.labels[1:] if x != -100) for s in samples)
    params = [p for p in model.parameters() if p.requires_grad]
    model.train()

    out = model(**batch, num_items_in_batch=count)
    packed_grads = torch.autograd.grad(out.loss, params, allow_unused=True)
    pieces = [out.logits[row, start:end].detach() for row, start, end in segments(batch)]
    assert len(pieces) == len(samples)

    alone_loss = torch.zeros(())
    alone_grads: list[Any] = [torch.zeros_like(p) for p in params]
    alone_logits = {}
    for sample in samples:
        ids = torch.tensor([sample.input_ids])
        one = model(input_ids=ids, labels=torch.tensor([sample.labels]), num_items_in_batch=count)
        for total, grad in zip(
            alone_grads, torch.autograd.grad(one.loss, params, allow_unused=True), strict=True
        ):
            if grad is not None:
                total += grad
        alone_loss += one.loss.detach()
        alone_logits[tuple(sample.input_ids)] = one.logits[0].detach()

    # Logits to 1e-5 of the largest one: fp32 sums over a different batch shape (MoE routing
    # groups tokens by expert) differ by a few ulps of the logits' scale (~20 here).
    scale = max(1.0, max(float(t.abs().max()) for t in alone_logits.values()))
    for (row, start, end), piece in zip(segments(batch), pieces, strict=True):
        ids = tuple(batch["input_ids"][row, start:end].tolist())
        torch.testing.assert_close(piece, alone_logits[ids], atol=TOLERANCE * scale, rtol=TOLERANCE)
    torch.testing.assert_close(out.loss.detach(), alone_loss, atol=TOLERANCE, rtol=TOLERANCE)
    for packed, alone in zip(packed_grads, alone_grads, strict=True):
        packed = torch.zeros_like(alone) if packed is None else packed
        torch.testing.assert_close(packed, alone, atol=TOLERANCE, rtol=TOLERANCE)


@pytest.mark.parametrize("arch", LINEAR_ATTENTION_ARCHS)
def test_where_packing_is_off_the_probe_sees_the_leak(
    arch: str, wide_arch_dir: Callable[[str], Path]
) -> None:
    model = load(wide_arch_dir(arch))
    rows = probe_packing(model, "padded_rows", pad_token_id=0)
    assert not rows.exact
    assert rows.tolerance < 1e-3  # fp32: 1e-4 + 1e-5 x the largest logit (~20 here)
    assert rows.max_abs_diff > 100 * rows.tolerance
    flat = probe_packing(model, "flattened_varlen", pad_token_id=0)
    assert not flat.exact
    assert flat.error is not None and "flash-linear-attention" in flat.error


@pytest.mark.parametrize("arch", ["qwen2", "qwen3_moe"])
def test_the_probe_passes_models_that_pack_exactly(
    arch: str, wide_arch_dir: Callable[[str], Path]
) -> None:
    model = load(wide_arch_dir(arch))
    for mode in ("padded_rows", "flattened_varlen"):
        result = probe_packing(model, mode, pad_token_id=0)  # type: ignore[arg-type]
        assert result.exact, result.describe()


@pytest.mark.parametrize(
    ("fooled", "mode", "what"),
    [
        ("layer_types", "padded_rows", "changed the logits by"),
        ("kernels", "flattened_varlen", "failed to run"),
    ],
)
def test_the_probe_turns_packing_off_when_the_rules_are_wrong(
    fooled: str, mode: str, what: str, tiny_arch_dir: Callable[[str], Path], monkeypatch: Any
) -> None:
    model = load(tiny_arch_dir("qwen3_next"))
    if fooled == "layer_types":  # rules that take Gated DeltaNet for attention
        kinds = packing_mode.ATTENTION_LAYER_TYPES | {"linear_attention"}
        monkeypatch.setattr(packing_mode, "ATTENTION_LAYER_TYPES", kinds)
    else:  # rules that believe flash-linear-attention is here
        monkeypatch.setattr(packing_mode, "linear_kernel_problem_here", lambda cuda: None)
    config = model.config
    fooled_rules = decide_packing(
        config, requested=True, attn_implementation="sdpa", linear_kernel_problem=None
    )
    assert fooled_rules.mode == mode
    decision = configure_model_for_packing(model, requested=True, pad_token_id=0)
    assert decision.mode == "off"
    assert decision.reason.startswith(f"start-up probe: {mode} packing {what}")
    assert "leak" in decision.reason


@pytest.mark.parametrize(
    ("arch", "architecture", "mode"),
    [
        ("qwen2", "qwen2 (Qwen2ForCausalLM)", "padded_rows"),
        ("qwen3_moe", "qwen3_moe (Qwen3MoeForCausalLM)", "padded_rows"),
        ("qwen3_next", "qwen3_next (Qwen3NextForCausalLM)", "off"),
        ("qwen3_5", "qwen3_5 (Qwen3_5ForConditionalGeneration)", "off"),
    ],
)
def test_the_validator_names_the_architecture_and_its_packing(
    arch: str,
    architecture: str,
    mode: str,
    tiny_arch_dir: Callable[[str], Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    from qwenft_operator.cli import main as qwenft

    args = ["data", "validate", str(DATA_DIR / "mixed.jsonl"), "--model", str(tiny_arch_dir(arch))]
    capsys.readouterr()  # what building the model printed
    assert qwenft([*args, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["architecture"], report["packing"]) == (architecture, mode)
    if mode == "off":  # no CUDA for flash-linear-attention on the validating machine
        assert "linear attention (Gated DeltaNet)" in report["packing_reason"]
    assert qwenft(args) == 0
    text = capsys.readouterr().out
    assert f"  architecture     {architecture}\n" in text
    assert f"  packing          {mode} ({report['packing_reason']})\n" in text
    assert qwenft([*args, "--no-packing", "--json"]) == 0
    unpacked = json.loads(capsys.readouterr().out)
    assert (unpacked["packing"], unpacked["packing_reason"]) == ("off", "training.packing is false")


def test_the_model_facts_say_unknown_when_the_model_config_cannot_be_read(
    tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The report's architecture and packing lines; the CLI itself refuses such a model."""
    import shutil

    from qwenft_operator.cli import main as qwenft
    from qwenft_trainer.validate import describe_model

    tokenizer_only = tmp_path / "tokenizer-only"
    tokenizer_only.mkdir()
    for file in tiny_model_dir.iterdir():
        if file.name.startswith(("tokenizer", "chat_template")):
            shutil.copy(file, tokenizer_only / file.name)
    assert not (tokenizer_only / "config.json").exists()
    facts = describe_model(str(tokenizer_only))
    assert (facts["architecture"], facts["packing"]) == ("unknown", "unknown")
    assert facts["packing_reason"].startswith("can't read the model config of")
    args = ["data", "validate", str(DATA_DIR / "mixed.jsonl"), "--model", str(tokenizer_only)]
    capsys.readouterr()
    assert qwenft([*args, "--json"]) == 2  # config.json is checked before anything else
    assert "config.json" in json.loads(capsys.readouterr().out)["message"]


@pytest.mark.parametrize(("arch", "mode"), [("qwen2", "padded_rows"), ("qwen3_next", "off")])
def test_under_zero3_linear_attention_is_not_packed_unprobed(
    arch: str, mode: str, tiny_arch_dir: Callable[[str], Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """ZeRO-3 shards the weights before the probe could run (DeepSpeed marks them ds_numel)."""
    model = load(tiny_arch_dir(arch))
    for param in model.parameters():
        param.ds_numel = param.numel()  # type: ignore[attr-defined]
    monkeypatch.setattr(packing_mode, "linear_kernel_problem_here", lambda cuda: None)

    def no_probe(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the probe can't run on partitioned weights")

    monkeypatch.setattr(packing_mode, "probe_packing", no_probe)
    decision = configure_model_for_packing(model, requested=True, pad_token_id=0)
    assert decision.mode == mode
    if mode == "off":
        assert "ZeRO-3 partitions the weights before the start-up probe" in decision.reason
    else:
        assert decision.reason.endswith("start-up probe skipped (ZeRO-3)")


def one_step(model_dir: Path, data: Path, root: Path, *, packing: bool) -> InProcessRun:
    """One optimizer step over the whole dataset (one batch holds every item)."""
    name = "packed" if packing else "unpacked"
    config = write_config(
        root / f"{name}.yaml",
        model_dir,
        data,
        root / name,
        lora={"r": 8, "alpha": 16},
        training={
            "max_steps": 1,
            "per_device_batch_size": 64,
            "learning_rate": 1e-3,
            "max_seq_length": MAX_LEN,
            "packing": packing,
        },
    )
    run = InProcessRun(config)
    assert run.code == 0, run.stderr[-3000:]
    return run


@pytest.mark.slow
@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_one_step_over_a_dataset_is_the_same_packed_or_not(
    arch: str,
    wide_arch_dir: Callable[[str], Path],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="qwenft_trainer.session")
    data = write_dialogues(tmp_path / "train.jsonl", count=12)
    packed = one_step(wide_arch_dir(arch), data, tmp_path, packing=True)
    unpacked = one_step(wide_arch_dir(arch), data, tmp_path, packing=False)
    (on,) = events(packed.stdout, "train_log")
    (off,) = events(unpacked.stdout, "train_log")
    assert on["loss"] == pytest.approx(off["loss"], rel=TOLERANCE)
    assert on["grad_norm"] == pytest.approx(off["grad_norm"], rel=TOLERANCE)
    assert on["grad_norm"] > 0

    summary = json.loads((tmp_path / "packed" / "summary.json").read_text())
    assert summary["packing"] == MODE_ON_CPU[arch]
    assert summary["attention"] == "sdpa"  # the CPU path, whatever the architecture
    assert summary["attention_reason"].startswith("no CUDA device")
    start = events(packed.stdout, "train_start")[0]
    assert (start["packing"], start["packing_reason"]) == (
        summary["packing"],
        summary["packing_reason"],
    )
    assert (start["attention"], start["attention_reason"]) == (
        summary["attention"],
        summary["attention_reason"],
    )
    if arch in LINEAR_ATTENTION_ARCHS:
        assert "linear attention" in summary["packing_reason"]
    else:
        assert "start-up probe: packed = separate logits" in summary["packing_reason"]
    logged = [r.getMessage() for r in caplog.records]
    assert f"packing: {summary['packing']} ({summary['packing_reason']})" in logged
    assert f"attention: sdpa ({summary['attention_reason']})" in logged
    off_summary = json.loads((tmp_path / "unpacked" / "summary.json").read_text())
    assert (off_summary["packing"], off_summary["packing_reason"]) == (
        "off",
        "training.packing is false",
    )


@pytest.mark.slow
def test_a_leak_would_show_in_that_step(
    wide_arch_dir: Callable[[str], Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """qwen3_next packed anyway (rules and probe fooled): the step differs far beyond 1e-5."""
    data = write_dialogues(tmp_path / "train.jsonl", count=12)
    unpacked = one_step(wide_arch_dir("qwen3_next"), data, tmp_path, packing=False)
    kinds = packing_mode.ATTENTION_LAYER_TYPES | {"linear_attention"}
    monkeypatch.setattr(packing_mode, "ATTENTION_LAYER_TYPES", kinds)
    blind = packing_mode.ProbeResult("padded_rows", max_abs_diff=0.0, tolerance=1.0)
    monkeypatch.setattr(packing_mode, "probe_packing", lambda *args, **kwargs: blind)
    leaky = one_step(wide_arch_dir("qwen3_next"), data, tmp_path, packing=True)
    (on,) = events(leaky.stdout, "train_log")
    (off,) = events(unpacked.stdout, "train_log")
    assert json.loads((tmp_path / "packed" / "summary.json").read_text())["packing"] == (
        "padded_rows"
    )
    assert on["loss"] != pytest.approx(off["loss"], rel=10 * TOLERANCE)  # measured 7e-4
    assert on["grad_norm"] != pytest.approx(off["grad_norm"], rel=100 * TOLERANCE)  # 1e-2


@pytest.mark.gpu
@pytest.mark.parametrize("arch", LINEAR_ATTENTION_ARCHS)
def test_linear_attention_packs_flattened_and_exactly_on_cuda(
    arch: str, tiny_arch_dir: Callable[[str], Path]
) -> None:
    import torch

    pytest.importorskip(
        "fla.ops.gated_delta_rule", reason="flash-linear-attention is not installed"
    )
    import transformers
    from qwenft_trainer import architectures, attention

    path = tiny_arch_dir(arch)
    tokenizer, samples = tokenized(path)
    config = transformers.AutoConfig.from_pretrained(str(path))
    choice = attention.decide_attention(  # what a CUDA run with training.attention auto loads
        requested="auto",
        cuda=True,
        precision="fp32",
        supported=attention.supported_implementations(architectures.concrete_model_class(config)),
        problems=attention.kernel_problems_here(cuda=True),
    )
    assert choice.implementation != "flex_attention"  # no flex path for these in transformers
    model = transformers.AutoModelForCausalLM.from_pretrained(
        str(path), attn_implementation=choice.implementation, dtype=torch.float32
    ).to("cuda")
    assert packing_mode.linear_kernel_problem_here(cuda=True) is None
    rules = decide_packing(
        model.config,
        requested=True,
        attn_implementation=choice.implementation,
        linear_kernel_problem=None,
    )
    assert rules.mode == "flattened_varlen"
    decision = configure_model_for_packing(
        model, requested=True, pad_token_id=tokenizer.pad_token_id
    )
    # The probe may still find a leak (transformers 5.24 runs the layers' causal convolution
    # without the boundaries): then the run trains unpacked and says why. Whatever it
    # decided, the batch the run trains with gives every sample its own logits.
    assert decision.mode in ("flattened_varlen", "off"), decision.reason
    batch = {
        k: v.to("cuda") if hasattr(v, "to") else v
        for k, v in training_batch(decision.mode, samples, tokenizer).items()
    }
    print(decision.log_line())  # which of the two the GPU run found
    with torch.no_grad():
        logits = model(**batch).logits
        for row, start, end in segments(batch):
            alone = model(input_ids=batch["input_ids"][row, start:end][None]).logits[0]
            torch.testing.assert_close(logits[row, start:end], alone, atol=1e-4, rtol=0)


@pytest.mark.gpu
def test_flash_linear_attention_keeps_cu_seqlens_segments_apart() -> None:
    """The kernel the flattened mode relies on: one varlen call == each segment alone."""
    import torch

    kernels = pytest.importorskip(
        "fla.ops.gated_delta_rule", reason="flash-linear-attention is not installed"
    )
    generator = torch.Generator(device="cuda").manual_seed(0)
    lengths, heads, dim = [37, 64, 21], 4, 32

    def randn(*shape: int) -> Any:
        return torch.randn(*shape, generator=generator, device="cuda")

    total = sum(lengths)
    q, k, v = randn(1, total, heads, dim), randn(1, total, heads, dim), randn(1, total, heads, dim)
    g = -torch.rand(1, total, heads, generator=generator, device="cuda")  # log decay < 0
    beta = torch.rand(1, total, heads, generator=generator, device="cuda")
    bounds = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], device="cuda")
    packed, _ = kernels.chunk_gated_delta_rule(
        q, k, v, g=g, beta=beta, cu_seqlens=bounds, use_qk_l2norm_in_kernel=True
    )
    for start, end in zip(bounds[:-1].tolist(), bounds[1:].tolist(), strict=True):
        part = slice(start, end)
        alone, _ = kernels.chunk_gated_delta_rule(
            q[:, part],
            k[:, part],
            v[:, part],
            g=g[:, part],
            beta=beta[:, part],
            use_qk_l2norm_in_kernel=True,
        )
        torch.testing.assert_close(packed[:, part], alone, atol=1e-3, rtol=1e-3)
