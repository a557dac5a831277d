"""Adaptive rank (``lora.adaptive``, peft's AdaLoRA) end to end on the tiny model.

Covers, on one real ``qwenft train`` run (rank 8 pruned to an average of 2 over 12 steps,
checkpoints every 4): the saved adapter is an AdaLoRA whose rank pattern meets the budget,
with ranks that differ per matrix and tensors cut to them, while checkpoints keep the full
rank and the allocator's state; a run resumed from the mid-pruning checkpoint ends with
the uninterrupted run's adapter (rtol 1e-5, atol 1e-6), and a restart after the last
checkpoint exports that same adapter; the merged model gives the logits of base + adapter
(atol 1e-4) and differs from the base; the builtin server loads the adapter with peft and
answers a chat completion; the vLLM decision of the trainer (on the adapter) and of the
operator (on the spec) both merge it first, for the same reason, while the builtin engine
serves it unmerged; two processes with gradient accumulation and checkpointing resume the
same way. Without training: settings that can't work are refused naming the
field, AdaLoRA on fused expert tensors is refused, and an epoch-sized run whose schedule
doesn't fit stops at the start.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from support import poll
from trainrun import assert_same_adapter, events, run, torchrun, write_config, write_dialogues

STEPS, SAVE_EVERY, RANK, TARGET = 12, 4, 8, 2
ADAPTIVE = {"target_rank": TARGET, "warmup_steps": 2, "final_steps": 3, "interval": 1}
PROMPT = [{"role": "user", "content": "Explain LoRA in one sentence."}]


def qwenft_train(config: Path) -> str:
    cmd = [sys.executable, "-m", "qwenft_operator.cli", "train", "--config", str(config)]
    return run(cmd).stdout


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Path:
    """The uninterrupted run's output directory (its config beside it as ``ref.yaml``)."""
    root = tmp_path_factory.mktemp("adaptive")
    data = write_dialogues(root / "train.jsonl", count=48)
    config = write_config(
        root / "ref.yaml",
        tiny_model_dir,
        data,
        root / "ref",
        lora={"r": RANK, "alpha": 16, "dropout": 0.0, "adaptive": ADAPTIVE},
        training={"max_steps": STEPS},
        checkpoint={"save_steps": SAVE_EVERY, "keep": 3},
    )
    qwenft_train(config)
    return root / "ref"


def restarted_from(trained: Path, step: int, name: str) -> tuple[Path, str]:
    """A fresh output directory holding only ``checkpoint-<step>``, trained again."""
    out = trained.parent / name
    shutil.copytree(trained / f"checkpoint-{step}", out / f"checkpoint-{step}")
    config = yaml.safe_load((trained.parent / "ref.yaml").read_text(encoding="utf-8"))
    config["output_dir"] = str(out)
    path = trained.parent / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return out, qwenft_train(path)


def kept(config: dict[str, Any]) -> dict[str, int]:
    from qwenft_trainer.adaptive_rank import kept_ranks

    return kept_ranks(config["rank_pattern"])


@pytest.mark.slow
def test_ranks_are_reallocated_to_the_budget(trained: Path) -> None:
    from safetensors.torch import load_file

    config = json.loads((trained / "adapter_config.json").read_text())
    assert config["peft_type"] == "ADALORA"
    assert (config["init_r"], config["target_r"], config["total_step"]) == (RANK, TARGET, STEPS)
    ranks = kept(config)
    assert len(ranks) == 14  # 7 projections x 2 layers of the tiny model
    assert sum(ranks.values()) == TARGET * len(ranks), ranks  # the budget, exactly
    assert len(set(ranks.values())) > 2, f"ranks should differ by importance: {ranks}"
    assert max(ranks.values()) > TARGET and min(ranks.values()) < TARGET
    weights = load_file(trained / "adapter_model.safetensors")
    for module, rank in ranks.items():
        stem = f"base_model.model.{module}"
        assert weights[f"{stem}.lora_A"].shape[0] == rank
        assert weights[f"{stem}.lora_B"].shape[1] == rank
        assert weights[f"{stem}.lora_E"].shape == (rank, 1)

    # a checkpoint keeps every matrix at full rank, pruned values zero, plus the budget state
    checkpoint = trained / f"checkpoint-{2 * SAVE_EVERY}"
    full = load_file(checkpoint / "adapter_model.safetensors")
    assert all(t.shape[0] == RANK for k, t in full.items() if k.endswith("lora_E"))
    state = torch.load(checkpoint / "adaptive_rank.pt", weights_only=True)
    assert state["exp_avg_ipt"], "the importance averages are saved"
    mid = kept({"rank_pattern": state["rank_pattern"]})
    assert TARGET * len(mid) < sum(mid.values()) < RANK * len(mid), "mid-pruning budget"
    for name, mask in state["rank_pattern"].items():
        values = full[f"base_model.model.{name.removesuffix('.default')}"].flatten()
        assert not values[~torch.tensor(mask)].any(), f"{name}: pruned values must be zero"


@pytest.mark.slow
def test_resume_ends_with_the_uninterrupted_adapter(trained: Path) -> None:
    step = 2 * SAVE_EVERY  # inside the pruning phase: the averages decide what follows
    out, stdout = restarted_from(trained, step, "resumed")
    assert events(stdout, "train_start")[0]["resumed_from_step"] == step
    assert [e["step"] for e in events(stdout, "train_log")] == list(range(step + 1, STEPS + 1))
    diff = assert_same_adapter(out, trained)
    resumed = json.loads((out / "adapter_config.json").read_text())
    assert kept(resumed) == kept(json.loads((trained / "adapter_config.json").read_text()))
    print(f"adaptive resume: largest difference {diff:.2e}")


@pytest.mark.slow
def test_restart_after_the_last_checkpoint_exports_the_cut_adapter(trained: Path) -> None:
    out, stdout = restarted_from(trained, STEPS, "finished")
    assert not events(stdout, "train_log"), "nothing is left to train"
    assert_same_adapter(out, trained)
    assert json.loads((out / "adapter_config.json").read_text())["rank_pattern"]
    assert not (out / "adaptive_rank.pt").exists()


@pytest.mark.slow
def test_two_processes_with_accumulation_resume_like_one_run(trained: Path) -> None:
    """DDP: every rank scores the same all-reduced gradients; accumulation and gradient
    checkpointing call the budget update once per optimizer step."""
    root = trained.parent
    settings = {
        "lora": {"r": RANK, "alpha": 16, "dropout": 0.0, "adaptive": {**ADAPTIVE, "interval": 2}},
        "training": {
            "max_steps": 8,
            "gradient_accumulation_steps": 2,
            "gradient_checkpointing": True,
        },
        "checkpoint": {"save_steps": 4, "keep": 3},
    }
    model = Path(yaml.safe_load((root / "ref.yaml").read_text())["model"]["name_or_path"])
    config = write_config(root / "ddp.yaml", model, root / "train.jsonl", root / "ddp", **settings)
    run(torchrun(2, config), timeout=600)
    ranks = kept(json.loads((root / "ddp" / "adapter_config.json").read_text()))
    assert sum(ranks.values()) == TARGET * len(ranks)
    resumed = root / "ddp-resumed"
    shutil.copytree(root / "ddp" / "checkpoint-4", resumed / "checkpoint-4")
    raw = yaml.safe_load(config.read_text(encoding="utf-8"))
    raw["output_dir"] = str(resumed)
    (root / "ddp-resumed.yaml").write_text(yaml.safe_dump(raw), encoding="utf-8")
    stdout = run(torchrun(2, root / "ddp-resumed.yaml"), timeout=600).stdout
    assert events(stdout, "train_start")[0]["resumed_from_step"] == 4
    assert_same_adapter(resumed, root / "ddp")


@pytest.mark.slow
def test_merge_gives_base_plus_adapter(trained: Path, tiny_model_dir: Path, tmp_path: Path) -> None:
    from peft import PeftModel
    from qwenft_trainer.merge import MergeOptions, merge
    from transformers import AutoModelForCausalLM, AutoTokenizer

    report = merge(MergeOptions(adapter=trained, output=tmp_path / "merged"))
    assert report.passed and report.max_abs_diff <= report.tolerance
    assert report.adapter_effect > 100 * report.tolerance, "probe must see the adapter"

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    text = tokenizer.apply_chat_template(PROMPT, tokenize=False, add_generation_prompt=True)
    ids = tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"]
    with torch.inference_mode():
        merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()(ids).logits
        base = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
        reference = PeftModel.from_pretrained(base, str(trained)).eval()(input_ids=ids).logits
        with_base = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()(ids).logits
    assert torch.allclose(merged, reference, atol=1e-4)
    assert not torch.allclose(merged, with_base, atol=1e-3)


@pytest.mark.slow
def test_builtin_server_serves_the_adapter(trained: Path, tiny_model_dir: Path) -> None:
    from fastapi.testclient import TestClient
    from qwenft_trainer.generation import EngineConfig, load_engine
    from qwenft_trainer.serve_app import ServerLimits, create_app

    config = EngineConfig(
        model=str(tiny_model_dir),
        served_model_name="tiny",
        adapters={"adaptive": str(trained)},
        device="cpu",
        max_model_len=256,
    )
    app = create_app(lambda: load_engine(config), ServerLimits(default_max_tokens=8))
    with TestClient(app) as api:
        poll(
            lambda: api.get("/readyz").status_code == 200,
            timeout=120,
            what="the model to load",
            interval=0.05,
        )
        models = {m["id"] for m in api.get("/v1/models").json()["data"]}
        assert "adaptive" in models
        body = {"model": "adaptive", "messages": PROMPT, "max_tokens": 8, "temperature": 0}
        reply = api.post("/v1/chat/completions", json=body)
    assert reply.status_code == 200, reply.text
    answer = reply.json()
    assert answer["model"] == "adaptive"
    assert answer["usage"]["completion_tokens"] > 0
    assert isinstance(answer["choices"][0]["message"]["content"], str)


@pytest.mark.slow
def test_vllm_decisions_merge_adaptive_adapters_first(trained: Path) -> None:
    from qwenft_operator.builders import serving as operator_serving
    from qwenft_operator.parsed_run import Run
    from qwenft_trainer import vllm_serving

    trainer = vllm_serving.read_vllm_decision(trained, served_model_name="demo")
    assert trainer.requires_merge and trainer.max_lora_rank is None
    assert trainer.reasons == (vllm_serving.ADALORA_REASON,)
    assert trainer.adapter_rank == max(
        kept(json.loads((trained / "adapter_config.json").read_text())).values()
    )

    def spec_run(engine: str) -> Run:
        body = {
            "apiVersion": "finetune.qwenft.io/v1alpha1",
            "kind": "QwenFineTune",
            "metadata": {"name": "adaptive", "namespace": "default", "uid": "u-1"},
            "spec": {
                "model": {"hub": {"id": "Qwen/Qwen2.5-0.5B-Instruct"}},
                "dataset": {"configMap": {"name": "chats", "key": "train.jsonl"}},
                "output": {"pvc": {"claimName": "runs"}},
                "resources": {"gpusPerNode": 1},
                "lora": {"r": 64, "targetParameters": [], "adaptive": {"targetRank": 16}},
                "merge": {"enabled": False},
                "inference": {"enabled": True, "engine": engine, "gpus": 1},
            },
        }
        return Run.from_body(body)

    vllm = spec_run("vllm")
    operator = operator_serving.vllm_decision(vllm)
    assert operator.requires_merge and operator.reasons == trainer.reasons
    assert operator_serving.needs_merge(vllm)
    assert operator_serving.build_serve_target(vllm).adapter is None  # the merged model
    builtin = spec_run("builtin")
    assert not operator_serving.needs_merge(builtin)
    assert operator_serving.build_serve_target(builtin).adapter is not None  # peft loads it


SCHEDULE = {"target_rank": 4, "warmup_steps": 10, "final_steps": 10}


def _config(**changes: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        "model": {"name_or_path": "/unused"},
        "data": {"path": "/unused.jsonl"},
        "output_dir": "/unused",
        "lora": {"r": 16, "adaptive": SCHEDULE},
        "training": {"max_steps": 100},
    }
    for key, value in changes.items():
        section, _, name = key.partition(".")
        if name:
            config[section] = {**config.get(section, {}), name: value}
        else:
            config[section] = value
    return config


@pytest.mark.parametrize(
    ("changes", "named"),
    [
        ({"lora.r": 4}, "lora.adaptive.targetRank: lora.adaptive starts every matrix at lora.r"),
        ({"lora.target_parameters": ["mlp.experts.down_proj"]}, "lora.targetParameters: "),
        ({"method": "full"}, "lora.adaptive: method full trains no adapter"),
        ({"deepspeed": {"enabled": True}}, "deepspeed.enabled: lora.adaptive scores ranks"),
        ({"training.max_steps": 20}, "leave no pruning steps in the run's 20 optimizer steps"),
        (
            {"training.max_steps": 25, "lora.adaptive": {**SCHEDULE, "interval": 6}},
            "lora.adaptive.interval 6 is longer than the 5 pruning steps",
        ),
    ],
)
def test_settings_that_cant_work_are_refused_naming_the_field(
    tmp_path: Path, changes: dict[str, Any], named: str
) -> None:
    from qwenft_trainer.config import ConfigError, load_config

    raw = _config(**changes)
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    with pytest.raises(ConfigError, match=named):
        load_config(path)
    raw = _config()
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    assert load_config(path).lora.adaptive is not None  # the unchanged settings are valid


def test_adaptive_rank_refuses_fused_expert_tensors(tiny_arch_dir: Any) -> None:
    from qwenft_trainer.config import TrainConfig
    from qwenft_trainer.modeling import build_lora_config
    from qwenft_trainer.targets import TargetError
    from transformers import AutoModelForCausalLM

    path = tiny_arch_dir("qwen3_moe")
    model = AutoModelForCausalLM.from_pretrained(path)
    raw = _config()
    raw["model"] = {"name_or_path": str(path)}
    with pytest.raises(TargetError, match=r"lora\.adaptive can't adapt the tensors .*experts"):
        build_lora_config(TrainConfig.model_validate(raw), model)
    raw["lora"]["target_parameters"] = []
    adalora = build_lora_config(TrainConfig.model_validate(raw), model)
    assert type(adalora).__name__ == "AdaLoraConfig" and adalora.init_r == 16


def test_epoch_sized_run_whose_schedule_does_not_fit_stops_at_the_start(
    tiny_model_dir: Path,
) -> None:
    from peft import get_peft_model
    from qwenft_trainer.adaptive_rank import AdaptiveRankCallback
    from qwenft_trainer.config import TrainConfig
    from qwenft_trainer.modeling import build_lora_config
    from transformers import AutoModelForCausalLM, TrainerControl, TrainerState

    raw = _config(**{"training.max_steps": -1})
    raw["model"] = {"name_or_path": str(tiny_model_dir)}
    config = TrainConfig.model_validate(raw)  # epochs: the step count is not known yet
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    peft_model = get_peft_model(model, build_lora_config(config, model))
    assert config.lora.adaptive is not None
    callback = AdaptiveRankCallback(config.lora.adaptive, resume_from=None)
    with pytest.raises(ValueError, match="leave no pruning steps in the run's 15 optimizer"):
        callback.on_train_begin(
            None,
            TrainerState(max_steps=15),
            TrainerControl(),
            model=peft_model,  # type: ignore[arg-type]
        )
    callback.on_train_begin(None, TrainerState(max_steps=40), TrainerControl(), model=peft_model)  # type: ignore[arg-type]
    assert peft_model.peft_config["default"].total_step == 40
