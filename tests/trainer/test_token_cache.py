"""The token cache: tokenize once per run, load everywhere else.

Covers: every TrainConfig field is classified as shaping the samples or not; the key
changes with each setting that shapes the samples, with the dataset's and the evaluation
file's bytes and with the tokenizer (chat template, special tokens), and stays the same
when anything else changes (the other settings, the dataset's path, the tokenizer's
directory); an entry written and read back gives the same samples (reasoning spans, an
eval split and none); a partial, truncated, altered, foreign-key or old-format entry is
refused; rank 0 builds once and a second call loads without tokenizing; a truncated entry
is rebuilt with a warning; entries of stale keys are pruned; a rank that sees neither an
entry nor rank 0 building tokenizes for itself; ``qwenft train`` reports "built" and then,
in a second run and a resumed one, "loaded" without calling the tokenizer, with the same
losses (1e-6) as the run that tokenized; under torchrun with two processes only rank 0
builds and rank 1 loads the same key.
"""

from __future__ import annotations

import json
import logging
import shutil
import types
import typing
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel
from qwenft_trainer import token_cache, token_keys
from qwenft_trainer.config import TrainConfig
from qwenft_trainer.data import TokenizedSample
from qwenft_trainer.distributed import DistributedEnv
from trainrun import InProcessRun, events, run, torchrun, write_config, write_dialogues

if typing.TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir: Path) -> PreTrainedTokenizerBase:
    from qwenft_trainer.config import ModelSource
    from qwenft_trainer.modeling import load_tokenizer

    return load_tokenizer(ModelSource(name_or_path=str(tiny_model_dir)))


@pytest.fixture
def data(tmp_path: Path) -> Path:
    return write_dialogues(tmp_path / "train.jsonl", count=24)


def make_config(model: Path, data: Path, output: Path, **extra: Any) -> TrainConfig:
    from trainrun import merge

    base: dict[str, Any] = {
        "model": {"name_or_path": str(model)},
        "data": {"path": str(data)},
        "training": {"max_seq_length": 128},
        "output_dir": str(output),
        "metrics_port": 0,
    }
    return TrainConfig.model_validate(merge(base, extra))


def changed(config: TrainConfig, dotted: str, value: Any) -> TrainConfig:
    dump = config.model_dump()
    *sections, name = dotted.split(".")
    target = dump
    for section in sections:
        target = target[section]
    target[name] = value
    return TrainConfig.model_validate(dump)


def leaf_fields(model: type[BaseModel], prefix: str = "") -> set[str]:
    leaves: set[str] = set()
    for name, field in model.model_fields.items():
        annotation = field.annotation
        options = typing.get_args(annotation) if isinstance(annotation, types.UnionType) else ()
        section = next(
            (t for t in (annotation, *options) if isinstance(t, type) and issubclass(t, BaseModel)),
            None,
        )
        if section is not None:
            leaves |= leaf_fields(section, f"{prefix}{name}.")
        else:
            leaves.add(f"{prefix}{name}")
    return leaves


# A value other than the default for every setting that shapes the samples.
SHAPING_CHANGES: dict[str, Any] = {
    "data.format": "messages",
    "training.max_seq_length": 64,
    "training.thinking": "empty-in-reply",
    "evaluation.fraction": 0.25,
    "training.seed": 7,  # checked with evaluation.fraction > 0
}
# A value other than the default for every setting that can't change the samples.
OTHER_CHANGES: dict[str, Any] = {
    "training.attention": "sdpa",
    "training.kernels": "none",
    "lora.adaptive.target_rank": 4,
    "lora.adaptive.warmup_steps": 2,
    "lora.adaptive.final_steps": 2,
    "lora.adaptive.interval": 2,
    "lora.adaptive.beta1": 0.9,
    "lora.adaptive.beta2": 0.9,
    "lora.adaptive.orthogonal_regularization": 0.1,
    "training.packing": False,
    "training.epochs": 3.0,
    "training.max_steps": 17,
    "training.per_device_batch_size": 4,
    "training.gradient_accumulation_steps": 2,
    "training.learning_rate": 1e-5,
    "training.scheduler": "linear",
    "training.warmup_ratio": 0.5,
    "training.weight_decay": 0.1,
    "training.max_grad_norm": 0.5,
    "training.precision": "fp32",
    "training.gradient_checkpointing": False,
    "training.logging_steps": 5,
    "evaluation.steps": 3,
    "lora.r": 8,
    "lora.alpha": 32,
    "lora.dropout": 0.1,
    "lora.target_modules": ["q_proj"],
    "lora.target_parameters": [],
    "lora.train_router": True,
    "lora.modules_to_save": ["lm_head"],
    "deepspeed.enabled": True,
    "deepspeed.zero_stage": 3,
    "deepspeed.offload_optimizer": True,  # with CONTEXT's ZeRO-2
    "deepspeed.offload_parameters": True,  # with CONTEXT's ZeRO-3
    "checkpoint.save_steps": 9,
    "checkpoint.keep": 1,
    "checkpoint.resume": False,
    "output_dir": "/somewhere/else",
    "run_name": "other",
    "metrics_port": 9999,
    "termination_log": "/tmp/other-log",
    # these choose the tokenizer; the key hashes the loaded tokenizer instead
    "model.name_or_path": "/models/elsewhere",
    "model.revision": "v2",
    "model.trust_remote_code": True,
    "model.cache_dir": "/cache",
    "model.token_env": "OTHER_TOKEN",
}
# Settings a change above needs to be valid at all.
CONTEXT: dict[str, dict[str, Any]] = {
    **{
        name: {"lora.adaptive": {"target_rank": 8}}
        for name in token_keys.OTHER_SETTINGS
        if name.startswith("lora.adaptive.")
    },
    "deepspeed.offload_parameters": {"deepspeed.enabled": True, "deepspeed.zero_stage": 3},
    "deepspeed.offload_optimizer": {"deepspeed.enabled": True, "deepspeed.zero_stage": 2},
}
QLORA_CHANGES: dict[str, Any] = {
    "quantization.quant_type": "fp4",
    "quantization.double_quant": False,
    "quantization.compute_dtype": "fp16",
}


def test_every_config_field_is_classified() -> None:
    tables = [
        token_keys.VALUE_SETTINGS,
        token_keys.FILE_SETTINGS,
        token_keys.TOKENIZER_SETTINGS,
        token_keys.OTHER_SETTINGS,
    ]
    classified = [name for table in tables for name in table]
    assert len(classified) == len(set(classified)), "a field is in two tables"
    assert set(classified) == leaf_fields(TrainConfig)
    # and this module has a test value for each
    assert set(SHAPING_CHANGES) == set(token_keys.VALUE_SETTINGS)
    other = set(token_keys.OTHER_SETTINGS) | set(token_keys.TOKENIZER_SETTINGS)
    assert set(OTHER_CHANGES) | set(QLORA_CHANGES) | {"method"} == other


@pytest.mark.parametrize("name", list(SHAPING_CHANGES))
def test_key_changes_with_each_setting_that_shapes_samples(
    name: str, tiny_model_dir: Path, data: Path, tmp_path: Path, tokenizer: Any
) -> None:
    base = make_config(tiny_model_dir, data, tmp_path / "out")
    if name == "training.seed":
        base = changed(base, "evaluation.fraction", 0.25)
        # without a held-out share the seed picks nothing and the key ignores it
        plain = make_config(tiny_model_dir, data, tmp_path / "out")
        reseeded = changed(plain, name, SHAPING_CHANGES[name])
        assert token_keys.build_key(plain, tokenizer) == token_keys.build_key(reseeded, tokenizer)
    other = changed(base, name, SHAPING_CHANGES[name])
    assert (
        token_keys.build_key(base, tokenizer).digest
        != token_keys.build_key(other, tokenizer).digest
    )


def test_key_ignores_settings_that_dont_shape_samples(
    tiny_model_dir: Path, data: Path, tmp_path: Path, tokenizer: Any
) -> None:
    base = make_config(tiny_model_dir, data, tmp_path / "out")
    want = token_keys.build_key(base, tokenizer).digest
    for name, value in OTHER_CHANGES.items():
        config = base
        for needed, setting in CONTEXT.get(name, {}).items():
            config = changed(config, needed, setting)
        assert token_keys.build_key(changed(config, name, value), tokenizer).digest == want, name
    qlora = changed(base, "method", "qlora")
    assert token_keys.build_key(qlora, tokenizer).digest == want
    for name, value in QLORA_CHANGES.items():
        assert token_keys.build_key(changed(qlora, name, value), tokenizer).digest == want, name


def test_key_follows_file_bytes_not_paths(
    tiny_model_dir: Path, data: Path, tmp_path: Path, tokenizer: Any
) -> None:
    def key(**extra: Any) -> str:
        return token_keys.build_key(make_config(tiny_model_dir, **extra), tokenizer).digest

    out = tmp_path / "out"
    want = key(data=data, output=out)
    moved = tmp_path / "moved" / "copy.jsonl"
    moved.parent.mkdir()
    shutil.copy(data, moved)
    assert key(data=moved, output=out) == want
    moved.write_bytes(data.read_bytes().replace(b"Paris", b"Lyon!"))
    assert key(data=moved, output=out) != want

    held_out = write_dialogues(tmp_path / "eval.jsonl", count=4)
    with_eval = key(data=data, output=out, evaluation={"file": str(held_out)})
    assert with_eval != want
    held_out.write_bytes(held_out.read_bytes() + held_out.read_bytes())
    assert key(data=data, output=out, evaluation={"file": str(held_out)}) != with_eval


def test_key_follows_the_tokenizer_not_its_directory(
    tiny_model_dir: Path, data: Path, tmp_path: Path
) -> None:
    from qwenft_trainer.config import ModelSource
    from qwenft_trainer.modeling import load_tokenizer

    copy = tmp_path / "model-copy"
    shutil.copytree(tiny_model_dir, copy)
    config = make_config(tiny_model_dir, data, tmp_path / "out")
    original = load_tokenizer(ModelSource(name_or_path=str(tiny_model_dir)))
    want = token_keys.build_key(config, original).digest
    same = load_tokenizer(ModelSource(name_or_path=str(copy)))
    assert token_keys.build_key(config, same).digest == want

    templated = load_tokenizer(ModelSource(name_or_path=str(copy)))
    templated.chat_template = str(templated.chat_template).replace(
        "You are a helpful assistant.", "You are terse."
    )
    assert token_keys.build_key(config, templated).digest != want

    padded = load_tokenizer(ModelSource(name_or_path=str(copy)))
    padded.pad_token = padded.eos_token
    assert token_keys.build_key(config, padded).digest != want

    grown = load_tokenizer(ModelSource(name_or_path=str(copy)))
    grown.add_tokens(["<extra_word>"])
    assert token_keys.build_key(config, grown).digest != want


# --- storage -----------------------------------------------------------------------------

SAMPLES = [
    TokenizedSample([5, 6, 7, 8], [-100, -100, 7, 8], truncated=False),
    TokenizedSample([1, 2, 3], [-100, 2, 3], truncated=True, reasoning_spans=((1, 2),)),
    TokenizedSample([151643] * 3, [-100, 151643, 151643], False, ((0, 1), (1, 3))),
]


def fake_key(tag: str = "a") -> token_keys.CacheKey:
    import hashlib

    return token_keys.CacheKey(hashlib.sha256(tag.encode()).hexdigest(), {"tag": tag})


@pytest.mark.parametrize("held_out", [None, [], SAMPLES[:1]])
def test_entry_round_trip(tmp_path: Path, held_out: list[TokenizedSample] | None) -> None:
    key = fake_key()
    entry = token_cache.write_entry(tmp_path, key, (SAMPLES, held_out), build_id="b1")
    meta = token_cache.read_meta(entry)
    assert meta is not None and meta["train_samples"] == 3
    assert token_cache.read_entry(entry, key, meta) == (SAMPLES, held_out)
    assert not list(tmp_path.glob(".tmp-*"))


def damage_truncate(entry: Path) -> None:
    data = (entry / token_cache.SAMPLES_FILE).read_bytes()
    (entry / token_cache.SAMPLES_FILE).write_bytes(data[: len(data) // 2])


def damage_flip(entry: Path) -> None:
    data = bytearray((entry / token_cache.SAMPLES_FILE).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (entry / token_cache.SAMPLES_FILE).write_bytes(bytes(data))


def damage_meta(entry: Path) -> None:
    (entry / token_cache.META_FILE).write_text('{"format": 1, "key": ')


def damage_format(entry: Path) -> None:
    meta = json.loads((entry / token_cache.META_FILE).read_text())
    (entry / token_cache.META_FILE).write_text(json.dumps({**meta, "format": 0}))


def damage_counts(entry: Path) -> None:
    meta = json.loads((entry / token_cache.META_FILE).read_text())
    (entry / token_cache.META_FILE).write_text(json.dumps({**meta, "train_samples": 2}))


@pytest.mark.parametrize(
    "damage", [damage_truncate, damage_flip, damage_meta, damage_format, damage_counts]
)
def test_damaged_entry_is_refused(tmp_path: Path, damage: Any) -> None:
    key = fake_key()
    entry = token_cache.write_entry(tmp_path, key, (SAMPLES, None), build_id="b1")
    damage(entry)
    with pytest.raises(token_cache.DamagedEntry):
        meta = token_cache.read_meta(entry)
        assert meta is not None
        token_cache.read_entry(entry, key, meta)


def test_entry_of_another_key_is_refused_and_missing_meta_is_incomplete(tmp_path: Path) -> None:
    entry = token_cache.write_entry(tmp_path, fake_key("a"), (SAMPLES, None), build_id="b1")
    meta = token_cache.read_meta(entry)
    assert meta is not None
    with pytest.raises(token_cache.DamagedEntry, match="another key"):
        token_cache.read_entry(entry, fake_key("b"), meta)
    (entry / token_cache.META_FILE).unlink()
    assert token_cache.read_meta(entry) is None


# --- building and loading ----------------------------------------------------------------


class Builds:
    """A ``build`` for load_or_build that counts its calls (real validation + tokenizing)."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, config: TrainConfig, tokenizer: Any) -> token_cache.Samples:
        from qwenft_trainer.train import validated_samples

        self.calls += 1
        return validated_samples(config, tokenizer)


def test_rank0_builds_once_then_loads(
    tiny_model_dir: Path, data: Path, tmp_path: Path, tokenizer: Any
) -> None:
    config = make_config(tiny_model_dir, data, tmp_path / "out", evaluation={"fraction": 0.25})
    builds = Builds()
    first = token_cache.load_or_build(config, DistributedEnv(), tokenizer, build=builds)
    assert first.record.status == "built" and builds.calls == 1
    assert first.eval is not None and len(first.train) == 18 and len(first.eval) == 6
    second = token_cache.load_or_build(config, DistributedEnv(), tokenizer, build=builds)
    assert second.record.status == "loaded" and builds.calls == 1
    assert second.record.key == first.record.key
    assert (second.train, second.eval) == (first.train, first.eval)
    assert not (token_cache.cache_root(config) / token_cache.BEAT_FILE).exists()


def test_truncated_entry_is_rebuilt_with_a_warning(
    tiny_model_dir: Path,
    data: Path,
    tmp_path: Path,
    tokenizer: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    config = make_config(tiny_model_dir, data, tmp_path / "out")
    builds = Builds()
    first = token_cache.load_or_build(config, DistributedEnv(), tokenizer, build=builds)
    damage_truncate(Path(first.record.path))
    with caplog.at_level(logging.WARNING, logger="qwenft_trainer.token_cache"):
        again = token_cache.load_or_build(config, DistributedEnv(), tokenizer, build=builds)
    assert again.record.status == "built" and builds.calls == 2
    assert any("is damaged" in r.getMessage() for r in caplog.records)
    assert again.train == first.train
    third = token_cache.load_or_build(config, DistributedEnv(), tokenizer, build=builds)
    assert third.record.status == "loaded" and builds.calls == 2


def test_entries_of_stale_keys_are_pruned(
    tiny_model_dir: Path, data: Path, tmp_path: Path, tokenizer: Any
) -> None:
    config = make_config(tiny_model_dir, data, tmp_path / "out")
    first = token_cache.load_or_build(config, DistributedEnv(), tokenizer, build=Builds())
    leftover = token_cache.cache_root(config) / ".tmp-0123-dead"
    leftover.mkdir()
    shorter = changed(config, "training.max_seq_length", 64)
    second = token_cache.load_or_build(shorter, DistributedEnv(), tokenizer, build=Builds())
    assert second.record.status == "built"
    assert sorted(p.name for p in token_cache.cache_root(config).iterdir()) == [
        Path(second.record.path).name
    ]
    assert not Path(first.record.path).exists()
    leftover.mkdir()  # a build killed before its rename, found by a run that loads
    third = token_cache.load_or_build(shorter, DistributedEnv(), tokenizer, build=Builds())
    assert third.record.status == "loaded" and not leftover.exists()


def test_rank_without_entry_or_builder_tokenizes_itself(
    tiny_model_dir: Path,
    data: Path,
    tmp_path: Path,
    tokenizer: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    config = make_config(tiny_model_dir, data, tmp_path / "out")
    builds = Builds()
    rank1 = DistributedEnv(rank=1, local_rank=1, world_size=2, local_world_size=2)
    with caplog.at_level(logging.WARNING, logger="qwenft_trainer.token_cache"):
        got = token_cache.load_or_build(config, rank1, tokenizer, build=builds, silence_seconds=0.5)
    assert got.record.status == "tokenized" and builds.calls == 1
    assert any("tokenizing here" in r.getMessage() for r in caplog.records)
    assert not Path(got.record.path).exists(), "only rank 0 writes the cache"


def test_waiting_rank_loads_what_rank0_publishes(
    tiny_model_dir: Path, data: Path, tmp_path: Path, tokenizer: Any
) -> None:
    """Rank 1 keeps waiting while rank 0's heartbeat beats, then loads rank 0's entry."""
    import threading

    config = make_config(tiny_model_dir, data, tmp_path / "out")
    release = threading.Event()

    def slow_build(cfg: TrainConfig, tok: Any) -> token_cache.Samples:
        assert release.wait(60)
        return Builds()(cfg, tok)

    built: list[token_cache.PreparedSamples] = []
    rank0 = threading.Thread(
        target=lambda: built.append(
            token_cache.load_or_build(config, DistributedEnv(), tokenizer, build=slow_build)
        )
    )
    beat = token_cache.cache_root(config) / token_cache.BEAT_FILE
    rank0.start()
    try:
        from support import poll

        poll(beat.exists, timeout=30, what="rank 0's heartbeat")
        waiter = Builds()
        rank1 = DistributedEnv(rank=1, local_rank=1, world_size=2, local_world_size=2)
        timer = threading.Timer(1.5, release.set)  # rank 0 finishes after rank 1 waits
        timer.start()
        got = token_cache.load_or_build(config, rank1, tokenizer, build=waiter, silence_seconds=30)
    finally:
        release.set()
        rank0.join(60)
    assert got.record.status == "loaded" and waiter.calls == 0
    assert built and built[0].record.status == "built"
    assert got.train == built[0].train and got.record.key == built[0].record.key


# --- qwenft train ------------------------------------------------------------------------


def forbid_tokenizing(patch: pytest.MonkeyPatch) -> None:
    """Make any tokenization (validation or samples) fail the test."""
    from qwenft_trainer import data, validate

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("tokenized although the token cache holds the samples")

    patch.setattr(data, "tokenize_dialogue", refuse)
    patch.setattr(validate, "tokenize_dialogue", refuse)


def summary_of(output: Path) -> dict[str, Any]:
    result: dict[str, Any] = json.loads((output / "summary.json").read_text())
    return result


@pytest.mark.slow
def test_train_loads_the_cache_with_the_same_losses(tiny_model_dir: Path, tmp_path: Path) -> None:
    data = write_dialogues(tmp_path / "train.jsonl", count=24)
    settings: dict[str, Any] = {
        "training": {"max_steps": 4, "learning_rate": 0.02},
        "checkpoint": {"save_steps": 2, "keep": 2},
        "evaluation": {"fraction": 0.25, "steps": 2},
    }
    first_out = tmp_path / "first"
    first = InProcessRun(
        write_config(tmp_path / "a.yaml", tiny_model_dir, data, first_out, **settings)
    )
    assert first.code == 0, first.stderr[-3000:]
    built = summary_of(first_out)["token_cache"]
    assert built["status"] == "built"
    assert [e["status"] for e in events(first.stdout, "token_cache")] == ["built"]

    # a second run in another output directory, given the first one's cache
    second_out = tmp_path / "second"
    second_out.mkdir()
    shutil.copytree(first_out / token_cache.CACHE_SUBDIR, second_out / token_cache.CACHE_SUBDIR)
    with pytest.MonkeyPatch.context() as patch:
        forbid_tokenizing(patch)
        second = InProcessRun(
            write_config(tmp_path / "b.yaml", tiny_model_dir, data, second_out, **settings)
        )
    assert second.code == 0, second.stderr[-3000:]
    loaded = summary_of(second_out)["token_cache"]
    assert loaded["status"] == "loaded" and loaded["key"] == built["key"]
    assert len(first.losses()) == 4
    assert second.losses() == pytest.approx(first.losses(), abs=1e-6)
    first_eval = [e["eval_loss"] for e in events(first.stdout, "eval")]
    assert [e["eval_loss"] for e in events(second.stdout, "eval")] == pytest.approx(
        first_eval, abs=1e-6
    )

    # a resumed run (two more steps) loads the cache too
    with pytest.MonkeyPatch.context() as patch:
        forbid_tokenizing(patch)
        resumed = InProcessRun(
            write_config(tmp_path / "b.yaml", tiny_model_dir, data, second_out, **settings),
            "--max-steps",
            "6",
        )
    assert resumed.code == 0, resumed.stderr[-3000:]
    summary = summary_of(second_out)
    assert summary["resumed_from_step"] == 4 and summary["steps"] == 6
    assert summary["token_cache"]["status"] == "loaded"


@pytest.mark.slow
def test_two_processes_tokenize_once(tiny_model_dir: Path, tmp_path: Path) -> None:
    data = write_dialogues(tmp_path / "train.jsonl", count=24)
    config = write_config(
        tmp_path / "dist.yaml",
        tiny_model_dir,
        data,
        tmp_path / "out",
        training={"max_steps": 2, "per_device_batch_size": 1, "gradient_accumulation_steps": 1},
    )
    stdout = run(torchrun(2, config)).stdout
    reports = sorted(events(stdout, "token_cache"), key=lambda e: e["rank"])
    assert [(r["rank"], r["status"]) for r in reports] == [(0, "built"), (1, "loaded")]
    assert reports[0]["key"] == reports[1]["key"]
    assert summary_of(tmp_path / "out")["token_cache"]["status"] == "built"
    ends = sorted(events(stdout, "rank_end"), key=lambda e: e["rank"])
    assert [e["step"] for e in ends] == [2, 2]
    # a restart of the whole job: both ranks load
    again = run(torchrun(2, config, "--max-steps", "3")).stdout
    statuses = sorted((e["rank"], e["status"]) for e in events(again, "token_cache"))
    assert statuses == [(0, "loaded"), (1, "loaded")]


def test_pickled_arrays_are_refused(tmp_path: Path) -> None:
    """An entry whose arrays would need unpickling is damaged, never unpickled."""
    import numpy as np

    key = fake_key()
    entry = token_cache.write_entry(tmp_path, key, (SAMPLES, None), build_id="b1")
    samples_file = entry / token_cache.SAMPLES_FILE
    with np.load(samples_file) as arrays:
        content = {name: arrays[name] for name in arrays.files}
    content["train.input_ids"] = np.array([[1, 2], "text", None], dtype=object)
    with samples_file.open("wb") as handle:
        np.savez(handle, **content)
    meta = json.loads((entry / token_cache.META_FILE).read_text())
    meta["samples_sha256"] = token_keys.file_sha256(samples_file)  # a consistent checksum
    (entry / token_cache.META_FILE).write_text(json.dumps(meta))
    with pytest.raises(token_cache.DamagedEntry, match="can't be read"):
        token_cache.read_entry(entry, key, meta)
