"""The validation Job's token cache: ``qwenft data validate --token-cache-from-env``.

Covers: a dataset that passes is tokenized for the trainer config in the environment
variable, into that run's token cache, with the samples training would build (equal to
``build_samples`` on the trainer's tokenizer) and stdout left to the report; training then
loads them without tokenizing (summary.json says "loaded", under the same key); a cache
written for another tokenizer (a changed chat template) is ignored, rebuilt and pruned; an
invalid ``evaluation.file`` of that config fails validation, naming it; no variable (or an
empty one) writes nothing.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml
from qwenft_trainer import token_cache, token_keys
from qwenft_trainer.config import TrainConfig, load_config
from qwenft_trainer.validate import main as validate_main
from trainrun import InProcessRun, write_config, write_dialogues

ENV = "QWENFT_TRAIN_CONFIG"
SETTINGS: dict[str, Any] = {
    "training": {"max_steps": 2, "learning_rate": 0.02},
    "evaluation": {"fraction": 0.25, "steps": 2},
}


def validate(
    config_file: Path, patch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> tuple[int, dict[str, Any]]:
    """Run the validator as the validation Job does; (exit code, the JSON report)."""
    config = load_config(config_file)
    patch.setenv(ENV, config_file.read_text(encoding="utf-8"))
    argv = [
        config.data.path, "--model", config.model.name_or_path,
        "--max-seq-length", str(config.training.max_seq_length), "--json",
        "--token-cache-from-env", ENV,
    ]  # fmt: skip
    code = validate_main(argv)
    return code, json.loads(capsys.readouterr().out)


def entries(config: TrainConfig) -> list[Path]:
    root = token_cache.cache_root(config)
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if (p / token_cache.META_FILE).is_file())


def forbid_tokenizing(patch: pytest.MonkeyPatch) -> None:
    from qwenft_trainer import data, validate

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("tokenized although the validation Job cached the samples")

    patch.setattr(data, "tokenize_dialogue", refuse)
    patch.setattr(validate, "tokenize_dialogue", refuse)


def token_cache_record(output: Path) -> dict[str, Any]:
    record: dict[str, Any] = json.loads((output / "summary.json").read_text())["token_cache"]
    return record


@pytest.mark.slow
def test_training_loads_what_the_validator_cached(
    tiny_model_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from qwenft_trainer.data import build_samples
    from qwenft_trainer.modeling import load_tokenizer

    data = write_dialogues(tmp_path / "train.jsonl", count=24)
    out = tmp_path / "out"
    config_file = write_config(tmp_path / "train.yaml", tiny_model_dir, data, out, **SETTINGS)
    config = load_config(config_file)

    code, report = validate(config_file, monkeypatch, capsys)
    assert code == 0 and report["ok"] is True
    (entry,) = entries(config)
    meta = json.loads((entry / token_cache.META_FILE).read_text())
    key = token_keys.build_key(config, _tok(config))
    cached = token_cache.read_entry(entry, key, meta)
    assert cached == build_samples(config, load_tokenizer(config.model))

    with monkeypatch.context() as patch:
        forbid_tokenizing(patch)
        trained = InProcessRun(config_file)
    assert trained.code == 0, trained.stderr[-3000:]
    record = token_cache_record(out)
    assert record["status"] == "loaded" and record["key"] == meta["key"]


def _tok(config: TrainConfig) -> Any:
    from qwenft_trainer.modeling import load_tokenizer

    return load_tokenizer(config.model)


@pytest.mark.slow
def test_a_cache_for_another_tokenizer_is_ignored(
    tiny_model_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    other = tmp_path / "other-template"
    shutil.copytree(tiny_model_dir, other)
    tokenizer_config = other / "tokenizer_config.json"
    settings = json.loads(tokenizer_config.read_text())
    if "chat_template" in settings:
        settings["chat_template"] = settings["chat_template"].replace(
            "You are a helpful assistant.", "You are terse."
        )
        tokenizer_config.write_text(json.dumps(settings))
    else:
        template = other / "chat_template.jinja"
        text = template.read_text().replace("You are a helpful assistant.", "You are terse.")
        template.write_text(text)

    data = write_dialogues(tmp_path / "train.jsonl", count=24)
    out = tmp_path / "out"
    stale_file = write_config(tmp_path / "stale.yaml", other, data, out, **SETTINGS)
    code, _ = validate(stale_file, monkeypatch, capsys)
    assert code == 0
    (stale,) = entries(load_config(stale_file))

    config_file = write_config(tmp_path / "train.yaml", tiny_model_dir, data, out, **SETTINGS)
    trained = InProcessRun(config_file)
    assert trained.code == 0, trained.stderr[-3000:]
    record = token_cache_record(out)
    assert record["status"] == "built"
    assert Path(record["path"]).name != stale.name
    assert entries(load_config(config_file)) == [Path(record["path"])], "the stale one is pruned"


def test_an_invalid_evaluation_file_fails_validation(
    tiny_model_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    data = write_dialogues(tmp_path / "train.jsonl", count=12)
    broken = tmp_path / "eval.jsonl"
    broken.write_text('{"messages": [{"role": "user", "content": "no reply"}]}\nnot json\n')
    config_file = write_config(
        tmp_path / "train.yaml",
        tiny_model_dir,
        data,
        tmp_path / "out",
        evaluation={"file": str(broken)},
    )
    code, report = validate(config_file, monkeypatch, capsys)
    assert code == 1 and report["ok"] is False
    assert report["message"].startswith("evaluation.file: ")
    assert not entries(load_config(config_file)), "nothing cached for a run that can't train"


@pytest.mark.parametrize("value", [None, ""])
def test_no_trainer_config_writes_no_cache(
    tiny_model_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    value: str | None,
) -> None:
    data = write_dialogues(tmp_path / "train.jsonl", count=12)
    config_file = write_config(tmp_path / "train.yaml", tiny_model_dir, data, tmp_path / "out")
    if value is None:
        monkeypatch.delenv(ENV, raising=False)
    else:
        monkeypatch.setenv(ENV, value)
    argv = [str(data), "--model", str(tiny_model_dir), "--json", "--token-cache-from-env", ENV]
    assert validate_main(argv) == 0
    assert json.loads(capsys.readouterr().out)["ok"] is True
    assert not (tmp_path / "out").exists()
    assert yaml.safe_load(config_file.read_text())["output_dir"] == str(tmp_path / "out")


def test_a_validation_pod_too_small_leaves_tokenizing_to_training(
    tiny_model_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    from qwenft_trainer import validate as validate_module

    data = write_dialogues(tmp_path / "train.jsonl", count=12)
    config_file = write_config(tmp_path / "train.yaml", tiny_model_dir, data, tmp_path / "out")
    monkeypatch.setattr(validate_module, "available_memory_bytes", lambda: 1024)
    code, report = validate(config_file, monkeypatch, capsys)
    assert code == 0 and report["ok"] is True
    assert not entries(load_config(config_file))
    assert "the training pods tokenize" in caplog.text
    assert validate_module.fits_in_memory(0)
    monkeypatch.setattr(validate_module, "available_memory_bytes", lambda: None)
    assert validate_module.fits_in_memory(10**12), "unknown memory: try"
