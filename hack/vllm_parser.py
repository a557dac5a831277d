"""vLLM's own ``vllm serve`` argument parser, of the version the chart deploys, for the tests.

The operator starts vLLM (the chart's ``operator.vllmImage``) with command lines it builds
itself; tests/operator/test_vllm_args_accepted.py parses every one of them with the parser
of that very vLLM release, so a flag or value it would refuse at start-up fails a test
instead of a pod. vLLM pins its own torch, so it can't live in the project's venv:
``install`` puts the vLLM wheel (no dependencies) and the few small packages its argument
parser imports, missing from the venv, into ``~/.cache/qwenft/vllm-<version>``, drops the
compiled CUDA kernels (the parser never loads them), and does nothing when that is there.
``check`` runs in the venv's Python with that directory appended to ``sys.path`` (after the
venv's own packages, so torch and transformers stay the venv's).

    python hack/vllm_parser.py install        # once per vLLM version: a 440 MB download
    echo '{"demo": ["--model", "m", "--enable-lora", "--max-lora-rank", "64"]}' \\
        | python hack/vllm_parser.py check    # JSON: vLLM's verdict and values per command line

For each command line, ``check`` does what ``python -m vllm.entrypoints.openai.api_server``
does before it loads a model: ``make_arg_parser(FlexibleArgumentParser()).parse_args``,
``validate_parsed_serve_args``, ``AsyncEngineArgs.from_cli_args``; then it builds the
``LoRAConfig`` and ``ParallelConfig`` from those engine args the way
``EngineArgs.create_engine_config`` does (their ``__post_init__`` checks are where vLLM
refuses a ``--max-lora-rank`` outside its fixed set, or fewer CPU than GPU adapter slots).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
VALUES = ROOT / "charts" / "qwenft-operator" / "values.yaml"
# QWENFT_VLLM_CACHE=/tmp/c puts vLLM into /tmp/c/vllm-<version>.
CACHE = Path(os.environ.get("QWENFT_VLLM_CACHE", Path.home() / ".cache" / "qwenft"))
# What vLLM 0.11.0's parser import chain (vllm.engine.arg_utils, vllm.entrypoints.openai.
# cli_args) needs beyond the venv. Another vLLM version may need more: `check` then fails
# with the missing module's name; add its package here.
DEPENDENCIES = (
    "blake3==1.0.11",
    "cachetools==8.0.2",
    "cbor2==6.3.0",
    "cloudpickle==3.1.3",
    "msgspec==0.23.0",
    "openai-harmony==0.0.8",
    "partial-json-parser==0.2.1.1.post7",
    "pybase64==1.5.1",
    "pyzmq==27.3.0",
    "setproctitle==1.3.8",
)
STAMP = ".qwenft-installed"
# Ranks LoRAConfig is asked about, to report the set it accepts.
PROBED_RANKS = range(1, 1025)


def chart_vllm_version(values: Path = VALUES) -> str:
    """The vLLM release of the chart's ``operator.vllmImage`` (``vllm/vllm-openai:v0.11.0``
    -> ``0.11.0``)."""
    image = str(yaml.safe_load(values.read_text(encoding="utf-8"))["operator"]["vllmImage"])
    _repository, sep, tag = image.rpartition(":")
    if not sep or "/" in tag or not tag.removeprefix("v")[:1].isdigit():
        raise ValueError(f"{values}: operator.vllmImage {image!r} has no vLLM version tag")
    return tag.removeprefix("v")


def install_dir(version: str | None = None) -> Path:
    """Where ``install`` puts vLLM ``version`` (default: the chart's)."""
    return CACHE / f"vllm-{version or chart_vllm_version()}"


def _wanted(version: str) -> str:
    return "\n".join([f"vllm=={version}", *DEPENDENCIES]) + "\n"


def is_installed(version: str | None = None) -> bool:
    """Whether ``install`` finished for ``version`` with today's dependency list."""
    version = version or chart_vllm_version()
    stamp = install_dir(version) / STAMP
    return stamp.is_file() and stamp.read_text(encoding="utf-8") == _wanted(version)


def install(version: str | None = None) -> Path:
    """Install vLLM ``version`` (default: the chart's) and the parser's dependencies into
    :func:`install_dir`; nothing to do when it is there. Returns the directory."""
    version = version or chart_vllm_version()
    target = install_dir(version)
    if is_installed(version):
        return target
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.parent.mkdir(parents=True, exist_ok=True)
    print(f"installing vllm=={version} (no dependencies) into {target}", file=sys.stderr)
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--progress-bar", "off",
         "--no-deps", "--no-cache-dir", "--target", str(partial),
         f"vllm=={version}", *DEPENDENCIES],
        check=True,
    )  # fmt: skip
    # CUDA kernels (over 1 GB): vLLM imports them lazily or inside try/except, never to parse.
    for kernel in (partial / "vllm").rglob("*.so"):
        kernel.unlink()
    (partial / STAMP).write_text(_wanted(version), encoding="utf-8")
    shutil.rmtree(target, ignore_errors=True)
    partial.rename(target)
    return target


def _load_vllm(directory: Path) -> Any:
    """Import vLLM's parser from ``directory``; returns the namespace ``check`` uses."""
    if not (directory / STAMP).is_file():
        raise SystemExit(
            f"vLLM is not installed in {directory}: run python hack/vllm_parser.py install"
        )
    sys.path.append(str(directory))
    # vLLM logs to stdout unless told not to; stdout carries the JSON answer.
    os.environ["VLLM_CONFIGURE_LOGGING"] = "0"
    # Online, as in the server pods: offline, EngineArgs swaps a hub id for its snapshot in
    # the local cache. Nothing here downloads (the model is read only when the engine starts).
    os.environ["HF_HUB_OFFLINE"] = "0"
    import logging

    logging.getLogger("vllm").setLevel(logging.ERROR)
    # Resolving the platform needs a GPU or the CUDA kernels; the parser is the same on
    # every built-in platform (none overrides Platform.pre_register_and_update), so CPU.
    import vllm.platforms
    from vllm.platforms.cpu import CpuPlatform

    vllm.platforms._current_platform = CpuPlatform()
    from vllm.config import LoRAConfig, ParallelConfig
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.entrypoints.openai import cli_args
    from vllm.utils import FlexibleArgumentParser

    return argparse.Namespace(
        version=vllm.__version__,
        LoRAConfig=LoRAConfig,
        ParallelConfig=ParallelConfig,
        AsyncEngineArgs=AsyncEngineArgs,
        make_arg_parser=cli_args.make_arg_parser,
        validate_parsed_serve_args=cli_args.validate_parsed_serve_args,
        FlexibleArgumentParser=FlexibleArgumentParser,
    )


def _lora_config(v: Any, engine: Any) -> Any:
    """LoRAConfig from engine args, as vLLM 0.11.0's ``EngineArgs.create_engine_config``."""
    return v.LoRAConfig(
        bias_enabled=engine.enable_lora_bias,
        max_lora_rank=engine.max_lora_rank,
        max_loras=engine.max_loras,
        default_mm_loras=engine.default_mm_loras,
        fully_sharded_loras=engine.fully_sharded_loras,
        lora_extra_vocab_size=engine.lora_extra_vocab_size,
        lora_dtype=engine.lora_dtype,
        max_cpu_loras=engine.max_cpu_loras
        if engine.max_cpu_loras and engine.max_cpu_loras > 0
        else None,
    )


def _verdict(v: Any, args: list[str]) -> dict[str, Any]:
    """vLLM's verdict on one command line: ``error`` (None when accepted) and the values."""
    parser = v.make_arg_parser(v.FlexibleArgumentParser(prog="vllm.entrypoints.openai.api_server"))
    said = io.StringIO()
    try:
        with contextlib.redirect_stderr(said):
            parsed = parser.parse_args(args)
    except SystemExit:
        lines = said.getvalue().strip().splitlines()
        return {"error": lines[-1] if lines else "the parser exited", "values": None}
    try:
        v.validate_parsed_serve_args(parsed)
        engine = v.AsyncEngineArgs.from_cli_args(parsed)
        lora = _lora_config(v, engine) if engine.enable_lora else None
        v.ParallelConfig(
            tensor_parallel_size=engine.tensor_parallel_size,
            pipeline_parallel_size=engine.pipeline_parallel_size,
        )
    except Exception as err:  # vLLM raises ValueError, TypeError, pydantic's ValidationError
        return {"error": f"{type(err).__name__}: {err}", "values": None}
    modules = [[m.name, m.path] for m in parsed.lora_modules or []]
    return {
        "error": None,
        "values": {
            "model": engine.model,
            "served_model_name": engine.served_model_name,
            "revision": engine.revision,
            "tokenizer_revision": engine.tokenizer_revision,
            "max_model_len": engine.max_model_len,
            "tensor_parallel_size": engine.tensor_parallel_size,
            "trust_remote_code": engine.trust_remote_code,
            "enable_lora": bool(engine.enable_lora),  # None (unset) is off
            "max_lora_rank": lora.max_lora_rank if lora else None,
            "max_loras": lora.max_loras if lora else None,
            "max_cpu_loras": lora.max_cpu_loras if lora else None,
            "lora_modules": modules,
            "host": parsed.host,
            "port": parsed.port,
        },
    }


def accepted_lora_ranks(v: Any) -> list[int]:
    """Every ``--max-lora-rank`` in :data:`PROBED_RANKS` that vLLM's LoRAConfig accepts."""
    accepted = []
    for rank in PROBED_RANKS:
        try:
            v.LoRAConfig(max_lora_rank=rank)
        except ValueError:  # pydantic's ValidationError is one
            continue
        accepted.append(rank)
    return accepted


def check(cases: dict[str, list[str]], directory: Path) -> dict[str, Any]:
    """vLLM's verdict on each named command line, and the ranks it accepts."""
    v = _load_vllm(directory)
    return {
        "vllm_version": v.version,
        "lora_ranks": accepted_lora_ranks(v),
        "verdicts": {name: _verdict(v, list(args)) for name, args in cases.items()},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["install", "check", "dir"])
    parser.add_argument("--version", help="vLLM version (default: the chart's vllmImage tag)")
    opts = parser.parse_args(argv)
    if opts.command == "install":
        print(install(opts.version))
    elif opts.command == "dir":
        print(install_dir(opts.version))
    else:
        cases = json.load(sys.stdin)
        print(json.dumps(check(cases, install_dir(opts.version)), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
