"""The chunked causal-LM loss and the ``training.kernels`` setting.

Covers, on the CPU in fp32: the chunked loss and every trainable gradient equal the plain
path's (the model's own forward over full logits) within 1e-5, for LoRA on the tiny Qwen2
(tied embeddings), Qwen3 (dense) and Qwen3-MoE (router load-balancing loss included), on a
packed batch (restarting position ids, first label of each sample ignored), with and
without ``num_items_in_batch`` (the Trainer's gradient-accumulation normaliser), split into
several chunks; Qwen3.5-MoE (multimodal class, vision tower frozen) on an unpacked padded
batch; a full fine-tune's tied head and embedding get the same gradients (both uses
summed); an output head that is not a plain linear layer goes through the per-module path
with the same result; no trained token gives NaN like the plain path; a forward without
labels is the original one (logits unchanged). The decision: ``none`` is plain, ``auto``
is chunked without CUDA, ``liger`` refuses where Liger can't run, a bad value or liger with
ZeRO-3 is a config error naming ``training.kernels``. The real trainer (``qwenft train``)
with kernels none vs auto logs the same losses (within 1e-4) and says which path it took.
A GPU test checks Liger's loss and gradients against the plain path (skipped without CUDA).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from qwenft_trainer.chunked_loss import chunked_causal_lm_loss, install_chunked_loss
from qwenft_trainer.config import ConfigError, TrainConfig, load_config
from qwenft_trainer.kernels import KernelError, decide_kernels, liger_problem_here
from qwenft_trainer.packing_mode import build_packing_collator
from trainrun import InProcessRun, events, write_config, write_dialogues

# fp32 on both sides: the two paths differ only by summation order.
TOLERANCE = 1e-5


def _config(model_dir: Path, tmp_path: Path, **training: Any) -> TrainConfig:
    return TrainConfig.model_validate(
        {
            "model": {"name_or_path": str(model_dir)},
            "data": {"path": str(tmp_path / "unused.jsonl")},
            "lora": {"r": 4, "alpha": 8, "dropout": 0.0},
            "training": {"precision": "fp32", **training},
            "output_dir": str(tmp_path / "out"),
        }
    )


def _lora_model(model_dir: Path, tmp_path: Path) -> Any:
    """The tiny model as the trainer prepares it, with random (non-zero) LoRA B matrices."""
    from qwenft_trainer.modeling import load_model, prepare_model

    config = _config(model_dir, tmp_path)
    torch.manual_seed(0)
    model = prepare_model(load_model(config), config)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.1)
    return model.train()


def _packed_batch(vocab: int, lengths: list[list[int]]) -> dict[str, torch.Tensor]:
    """Rows of packed random samples, labels as packing makes them (first of each -100)."""
    generator = torch.Generator().manual_seed(2)
    rows = []
    for row in lengths:
        ids, labels, positions = [], [], []
        for n in row:
            seq = torch.randint(0, vocab, (n,), generator=generator).tolist()
            ids += seq
            # a prompt-like prefix is not trained, as with assistant-only labels
            labels += [-100] * (1 + n // 3) + seq[1 + n // 3 :]
            positions += list(range(n))
        rows.append({"input_ids": ids, "labels": labels, "position_ids": positions})
    return build_packing_collator("padded_rows", pad_token_id=0)(rows)


def _loss_and_grads(model: Any, batch: dict[str, Any]) -> tuple[float, dict[str, torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    loss = model(**batch).loss
    loss.backward()
    grads = {
        name: param.grad.detach().clone()
        for name, param in model.named_parameters()
        if param.requires_grad
    }
    assert grads and all(g is not None for g in grads.values())
    return float(loss), grads


def _compare(model: Any, batch: dict[str, Any], **install: Any) -> None:
    plain_loss, plain_grads = _loss_and_grads(model, batch)
    install_chunked_loss(model.get_base_model(), **install)
    loss, grads = _loss_and_grads(model, batch)
    assert abs(loss - plain_loss) <= TOLERANCE * max(1.0, abs(plain_loss))
    assert grads.keys() == plain_grads.keys()
    moved = 0
    for name, grad in grads.items():
        reference = plain_grads[name]
        scale = max(1.0, float(reference.abs().max()))
        diff = float((grad - reference).abs().max())
        assert diff <= TOLERANCE * scale, f"{name}: gradients differ by {diff:.2g}"
        moved += int(float(reference.abs().max()) > 0)
    assert moved == len(grads), "every adapter gets a gradient, so the comparison means something"


@pytest.mark.parametrize("arch", ["qwen2", "qwen3", "qwen3_moe"])
@pytest.mark.parametrize("num_items", [None, 57])
def test_chunked_loss_and_adapter_gradients_equal_the_plain_path(
    arch: str, num_items: int | None, tiny_arch_dir: Callable[[str], Path], tmp_path: Path
) -> None:
    model = _lora_model(tiny_arch_dir(arch), tmp_path)
    vocab = model.get_input_embeddings().weight.shape[0]
    batch: dict[str, Any] = _packed_batch(vocab, [[13, 11, 8], [20, 12]])
    if num_items is not None:
        batch["num_items_in_batch"] = torch.tensor(num_items)
    if arch == "qwen3_moe":
        assert model.config.output_router_logits  # the aux loss is part of both losses
    _compare(model, batch, chunk_rows=7)


def test_a_full_fine_tune_trains_the_tied_head_with_the_same_gradients(
    tiny_arch_dir: Callable[[str], Path], tmp_path: Path
) -> None:
    from qwenft_trainer.modeling import load_model, prepare_model

    config = _config(tiny_arch_dir("qwen2"), tmp_path)
    config = config.model_copy(update={"method": "full"})
    model = prepare_model(load_model(config), config).train()
    head = model.get_output_embeddings()
    assert head.weight.requires_grad and head.weight is model.get_input_embeddings().weight
    vocab = head.weight.shape[0]
    batch = _packed_batch(vocab, [[13, 11, 8], [20, 12]])
    plain_loss, plain_grads = _loss_and_grads(model, batch)
    install_chunked_loss(model, chunk_rows=6)
    loss, grads = _loss_and_grads(model, batch)
    assert abs(loss - plain_loss) <= TOLERANCE * max(1.0, abs(plain_loss))
    for name, grad in grads.items():
        scale = max(1.0, float(plain_grads[name].abs().max()))
        assert float((grad - plain_grads[name]).abs().max()) <= TOLERANCE * scale, name


def test_multimodal_moe_class_on_a_padded_batch(
    tiny_arch_dir: Callable[[str], Path], tmp_path: Path
) -> None:
    model = _lora_model(tiny_arch_dir("qwen3_5_moe"), tmp_path)
    assert type(model.get_base_model()).__name__ == "Qwen3_5MoeForConditionalGeneration"
    ids = torch.randint(0, 200, (2, 18), generator=torch.Generator().manual_seed(3))
    labels = ids.clone()
    labels[:, :5] = -100
    mask = torch.ones_like(ids)
    mask[1, 14:] = 0
    labels[1, 14:] = -100
    _compare(model, {"input_ids": ids, "attention_mask": mask, "labels": labels}, chunk_rows=5)


class _WrappedHead(torch.nn.Linear):
    """Not a plain ``nn.Linear``: the loss must call it as a module, as a LoRA'd head."""


def test_a_head_that_is_not_a_plain_linear_layer_is_called_per_chunk() -> None:
    generator = torch.Generator().manual_seed(4)
    head = _WrappedHead(16, 50, bias=True)
    hidden = torch.randn(2, 9, 16, generator=generator, requires_grad=True)
    labels = torch.randint(0, 50, (2, 9), generator=generator)
    labels[0, :3] = -100
    for fused in (False, True):
        module = head if not fused else torch.nn.Linear(16, 50, bias=True)
        module.load_state_dict(head.state_dict())
        logits = module(hidden).float()
        shifted = torch.nn.functional.pad(labels, (0, 1), value=-100)[:, 1:]
        expected = torch.nn.functional.cross_entropy(logits.flatten(0, 1), shifted.flatten())
        want = torch.autograd.grad(expected, [hidden, module.weight, module.bias])
        got_loss = chunked_causal_lm_loss(hidden, module, labels, chunk_rows=4)
        got = torch.autograd.grad(got_loss, [hidden, module.weight, module.bias])
        assert abs(float(got_loss) - float(expected)) <= TOLERANCE
        for a, b in zip(got, want, strict=True):
            assert float((a - b).abs().max()) <= TOLERANCE


def test_no_trained_token_gives_nan_like_the_plain_path() -> None:
    head = torch.nn.Linear(8, 20)
    hidden = torch.randn(1, 5, 8, requires_grad=True)
    labels = torch.full((1, 5), -100)
    assert torch.isnan(chunked_causal_lm_loss(hidden, head, labels))
    counted = chunked_causal_lm_loss(hidden, head, labels, num_items_in_batch=3)
    assert float(counted) == 0.0  # a micro-batch without trained tokens adds nothing


def test_a_forward_without_labels_is_the_original_one(
    tiny_arch_dir: Callable[[str], Path], tmp_path: Path
) -> None:
    model = _lora_model(tiny_arch_dir("qwen3"), tmp_path).eval()
    ids = torch.randint(0, 200, (1, 12), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        before = model(input_ids=ids).logits
        install_chunked_loss(model.get_base_model())
        after = model(input_ids=ids).logits
        with_labels = model(input_ids=ids, labels=ids)
    assert torch.equal(before, after)
    assert with_labels.logits.numel() == 0  # the loss path made no logits
    assert with_labels.hidden_states is None


def test_the_decision() -> None:
    none = decide_kernels("none", liger_problem=None)
    assert none.path == "plain"
    problem = liger_problem_here(cuda=False, model_type="qwen3", zero3=False)
    assert problem is not None and "CUDA" in problem
    auto = decide_kernels("auto", liger_problem=problem)
    assert auto.path == "chunked" and "CUDA" in auto.reason
    assert "loss path: chunked" in auto.log_line()
    with pytest.raises(KernelError, match=r"training\.kernels is liger"):
        decide_kernels("liger", liger_problem=problem)
    assert decide_kernels("auto", liger_problem=None).path == "liger"
    unknown = liger_problem_here(cuda=True, model_type="llama", zero3=False)
    assert unknown is not None and "llama" in unknown
    zero3 = liger_problem_here(cuda=True, model_type="qwen3", zero3=True)
    assert zero3 is not None and "ZeRO-3" in zero3


def test_config_errors_name_the_field(tmp_path: Path) -> None:
    base = {"model": {"name_or_path": "m"}, "data": {"path": "d"}, "output_dir": "o"}
    bad = tmp_path / "bad.yaml"
    bad.write_text(json.dumps({**base, "training": {"kernels": "fast"}}))
    with pytest.raises(ConfigError, match=r"training\.kernels: Input should be 'auto', 'liger'"):
        load_config(bad)
    zero3 = tmp_path / "zero3.yaml"
    zero3.write_text(
        json.dumps(
            {
                **base,
                "training": {"kernels": "liger"},
                "deepspeed": {"enabled": True, "zero_stage": 3},
            }
        )
    )
    with pytest.raises(ConfigError, match=r"training\.kernels: Liger's fused loss reads"):
        load_config(zero3)
    assert TrainConfig.model_validate(base).training.kernels == "auto"


@pytest.mark.slow
def test_the_trainer_gives_the_same_losses_with_kernels_none_and_auto(
    tiny_arch_dir: Callable[[str], Path], tmp_path: Path
) -> None:
    data = write_dialogues(tmp_path / "train.jsonl", count=24)
    runs = {}
    for kernels in ("none", "auto"):
        config = write_config(
            tmp_path / f"{kernels}.yaml",
            tiny_arch_dir("qwen3"),
            data,
            tmp_path / kernels,
            training={
                "max_steps": 4,
                "gradient_accumulation_steps": 2,
                "gradient_checkpointing": True,
                "kernels": kernels,
            },
        )
        run = InProcessRun(config)
        assert run.code == 0, run.stderr[-3000:]
        runs[kernels] = run
    plain, chunked = runs["none"].losses(), runs["auto"].losses()
    assert len(plain) == len(chunked) == 4
    # four optimizer steps of drift from summation order, fp32
    for a, b in zip(plain, chunked, strict=True):
        assert abs(a - b) <= 1e-4 * max(1.0, abs(a))
    assert plain[-1] < plain[0]  # it trained, so equal losses are not trivially equal
    start = events(runs["auto"].stdout, "train_start")[0]
    assert start["loss_path"] == "chunked" and "CUDA" in start["loss_path_reason"]
    summary = json.loads((tmp_path / "auto" / "summary.json").read_text())
    assert summary["loss_path"] == "chunked"
    assert json.loads((tmp_path / "none" / "summary.json").read_text())["loss_path"] == "plain"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="Liger Kernel needs a CUDA GPU")
@pytest.mark.parametrize("arch", ["qwen3", "qwen3_moe"])
def test_liger_loss_and_gradients_equal_the_plain_path(
    arch: str, tiny_arch_dir: Callable[[str], Path], tmp_path: Path
) -> None:
    from qwenft_trainer.kernels import apply_kernels
    from qwenft_trainer.modeling import load_model, prepare_model

    def run(kernels: str) -> tuple[float, dict[str, torch.Tensor], str]:
        config = _config(tiny_arch_dir(arch), tmp_path, kernels=kernels)
        torch.manual_seed(0)
        base = load_model(config).cuda()
        decision = apply_kernels(base, config, cuda=True)
        model = prepare_model(base, config).train()
        generator = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for name, param in model.named_parameters():
                if "lora_B" in name:
                    param.copy_(torch.randn(param.shape, generator=generator).cuda() * 0.1)
        vocab = model.get_input_embeddings().weight.shape[0]
        batch = {k: v.cuda() for k, v in _packed_batch(vocab, [[13, 11, 8], [20, 12]]).items()}
        loss, grads = _loss_and_grads(model, batch)
        return loss, grads, decision.path

    plain_loss, plain_grads, plain_path = run("none")
    loss, grads, path = run("liger")
    assert (plain_path, path) == ("plain", "liger")
    # Liger's RMSNorm / RoPE / SwiGLU kernels round differently from PyTorch's in fp32
    assert abs(loss - plain_loss) <= 1e-4 * max(1.0, abs(plain_loss))
    for name, grad in grads.items():
        scale = max(1.0, float(plain_grads[name].abs().max()))
        assert float((grad - plain_grads[name]).abs().max()) <= 1e-3 * scale, name
