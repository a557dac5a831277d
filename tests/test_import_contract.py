"""The import contract of docs/architecture.md, enforced.

Covers: the import-linter contracts in pyproject.toml (the trainer never imports the operator;
the operator's layers import downward; builders and the reconcile decision never reach the
API client or kopf; no import cycles inside either package; the operator never imports torch
or the training libraries itself); the trainer modules the operator may import (the pure ones:
config, exit codes, serving rules, the tiny-model catalogue); and every operator module
imported in a fresh interpreter where torch, transformers and the other training libraries
can't be imported, as in the operator image (Dockerfile.operator).
"""

from __future__ import annotations

import logging
import pkgutil
import subprocess
import sys
from pathlib import Path

import grimp
import pytest
import qwenft_operator
import qwenft_trainer
from importlinter.cli import lint_imports

ROOT = Path(__file__).parents[1]

# The trainer modules the operator may import: torch-free at module level, and rules the
# operator and the trainer must share (one definition each).
TRAINER_MODULES_FOR_THE_OPERATOR = {
    "qwenft_trainer.config",
    "qwenft_trainer.exit_codes",
    "qwenft_trainer.fit_estimate",
    "qwenft_trainer.hub_ids",
    "qwenft_trainer.model_shapes",
    "qwenft_trainer.rules",
    "qwenft_trainer.vllm_serving",
    "qwenft_trainer.tiny",
}

# What the operator image doesn't install (Dockerfile.operator: the `operator` extra only).
TRAINING_LIBRARIES = (
    "torch",
    "transformers",
    "peft",
    "deepspeed",
    "bitsandbytes",
    "accelerate",
    "safetensors",
    "tokenizers",
    "numpy",
    "fastapi",
    "uvicorn",
)


@pytest.fixture(scope="module")
def graph() -> grimp.ImportGraph:
    return grimp.build_graph("qwenft_operator", "qwenft_trainer", cache_dir=None)


def test_import_linter_contracts_are_kept() -> None:
    # import-linter configures logging with dictConfig, which disables every logger that
    # exists already; other tests read those loggers' records, so they are restored.
    loggers = [logging.getLogger(name) for name in logging.root.manager.loggerDict]
    disabled = {logger.name: logger.disabled for logger in loggers}
    try:
        exit_code = lint_imports(
            config_filename=str(ROOT / "pyproject.toml"), no_cache=True, no_logo=True
        )
    finally:
        for logger in loggers:
            logger.disabled = disabled[logger.name]
    assert exit_code == 0, (
        "an import contract of pyproject.toml is broken (the report above names the imports)"
    )


def test_the_operator_imports_only_the_trainers_pure_modules(graph: grimp.ImportGraph) -> None:
    imported = {
        (importer, imported)
        for importer in graph.find_children("qwenft_operator")
        | graph.find_descendants("qwenft_operator")
        for imported in graph.find_modules_directly_imported_by(importer)
        if imported.startswith("qwenft_trainer")
    }
    assert imported, "the operator renders the trainer config, so it imports qwenft_trainer"
    outside = sorted(pair for pair in imported if pair[1] not in TRAINER_MODULES_FOR_THE_OPERATOR)
    assert outside == [], "the operator imports trainer modules outside the contract"


def test_every_operator_module_imports_without_the_training_libraries() -> None:
    root = Path(qwenft_operator.__file__).parent
    modules = sorted(
        info.name for info in pkgutil.walk_packages([str(root)], prefix="qwenft_operator.")
    )
    assert "qwenft_operator.handlers" in modules and "qwenft_operator.builders.training" in modules
    code = (
        "import importlib, importlib.abc, sys\n"
        f"blocked = {TRAINING_LIBRARIES!r}\n"
        "class Block(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in blocked:\n"
        "            raise ImportError(f'{name} is not installed in the operator image')\n"
        "        return None\n"
        "sys.meta_path.insert(0, Block())\n"
        f"for module in {modules!r}:\n"
        "    importlib.import_module(module)\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & set(blocked)))\n"
    )
    paths = [str(Path(qwenft_operator.__file__).parents[1])]
    paths.append(str(Path(qwenft_trainer.__file__).parents[1]))
    env_path = ":".join(paths)
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": env_path, "PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
