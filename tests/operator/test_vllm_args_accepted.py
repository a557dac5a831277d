"""Every vLLM command line the operator builds, parsed by vLLM's own parser.

Covers: the arguments of every vLLM container in the golden manifests, of a QwenFineTune's
own vLLM Deployment over LoRA ranks 1 to 512 and 1 to 8 GPUs (adapter and merged model,
pinned revision, max model length, remote code), and of a QwenModelServer's over one to
eight adapters, mixed ranks and its vllm settings, are accepted by the ``vllm serve``
parser of the vLLM release the chart deploys (operator.vllmImage), and the LoRAConfig and
ParallelConfig vLLM builds from them; vLLM reads back each value we meant (model, served
name, revisions, --max-lora-rank, --max-loras, --max-cpu-loras, every --lora-modules name
and path, tensor parallel size, max model length, host, port); --max-lora-rank is the
smallest value vLLM accepts that fits the largest adapter, and VLLM_MAX_LORA_RANKS is
exactly the set vLLM accepts; the check can fail (a misspelt flag, a rank vLLM refuses,
fewer CPU than GPU adapter slots are refused by vLLM itself); the docs name the vLLM
release the tests check against.

vLLM lives outside the venv (hack/vllm_parser.py, installed by hack/setup.sh); without it
these tests fail under CI=true and skip elsewhere. One subprocess parses every case.
"""

from __future__ import annotations

import copy
import functools
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from qwenft_operator.builders import serving
from qwenft_operator.model_server import adapters as plan
from qwenft_operator.model_server import builders as server_builders
from qwenft_operator.parsed_run import Run
from qwenft_trainer import vllm_serving

ROOT = Path(__file__).parents[2]
GOLDEN = Path(__file__).parent / "golden"
EXAMPLES = ROOT / "examples"
sys.path.insert(0, str(ROOT / "hack"))

import vllm_parser  # noqa: E402

RANKS = (1, 8, 16, 32, 64, 100, 256, 512)
GPUS = (1, 2, 4, 8)
BASE = {"hub": {"id": "Qwen/Qwen2.5-7B-Instruct", "revision": "5d0f2e8a"}}


def vllm_args_of(manifest: dict[str, Any]) -> Iterator[tuple[str, list[str]]]:
    """(container name, arguments after VLLM_COMMAND) of each vLLM container."""
    template = (manifest.get("spec") or {}).get("template") or {}
    for container in (template.get("spec") or {}).get("containers") or []:
        command = list(container.get("command") or [])
        if command[: len(serving.VLLM_COMMAND)] == serving.VLLM_COMMAND:
            yield container["name"], command[len(serving.VLLM_COMMAND) :]


def golden_cases() -> dict[str, list[str]]:
    cases = {}
    for path in sorted(GOLDEN.rglob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            for container, args in vllm_args_of(doc or {}):
                cases[f"golden {path.relative_to(GOLDEN)} {container}"] = args
    return cases


def fine_tune(r: int, gpus: int, **extra: Any) -> Run:
    """examples/kueue-queued.yaml (vLLM serving the unmerged adapter) at rank r on gpus."""
    body = yaml.safe_load((EXAMPLES / "kueue-queued.yaml").read_text(encoding="utf-8"))
    body["metadata"].update(namespace="ml", uid="uid")
    spec = body["spec"]
    spec["lora"]["r"] = r
    spec["inference"]["gpus"] = gpus
    for key, value in extra.items():
        spec[key] = {**spec.get(key, {}), **value} if isinstance(value, dict) else value
    return Run.from_body(body)


def fine_tune_args(run: Run) -> list[str]:
    deployment = serving.build_serve_deployment(run, serving.build_serve_target(run))
    ((_, args),) = vllm_args_of(deployment)
    return args


FINE_TUNES: dict[str, Run] = {
    **{f"run r{r} gpus{g}": fine_tune(r, g) for r in RANKS for g in GPUS},
    "run pinned, long context, remote code": fine_tune(
        16,
        2,
        model={"hub": BASE["hub"], "trustRemoteCode": True},
        inference={"maxModelLen": 32768},
    ),
    "run merged": fine_tune(64, 4, merge={"enabled": True}),
}


def model_server(ranks: list[int], gpus: int, **spec: Any) -> server_builders.Server:
    adapters = [
        {"name": f"task-{i}", "pvc": {"claimName": "adapters", "path": f"task-{i}"}, "rank": r}
        for i, r in enumerate(ranks)
    ]
    body = {
        "metadata": {"name": "shared", "namespace": "ml", "uid": "uid-shared"},
        "spec": {"model": copy.deepcopy(BASE), "adapters": adapters, "gpus": gpus, **spec},
    }
    return server_builders.Server.from_body(body)


SERVERS: dict[str, server_builders.Server] = {
    **{f"server r{r} gpus{g}": model_server([r], g) for r in RANKS for g in (1, 4)},
    "server three ranks": model_server([8, 100, 32], 2),
    "server eight adapters": model_server([1, 8, 16, 32, 64, 100, 256, 512], 8),
    "server limits set": model_server(
        [16, 16, 16], 1, vllm={"maxLoras": 1, "maxCpuLoras": 2, "maxLoraRank": 100}
    ),
    "server maxLoraRank 1": model_server([1], 1, vllm={"maxLoraRank": 1}),
    "server long context": model_server([64, 64], 2, maxModelLen=131072),
}


def planned(server: server_builders.Server) -> list[plan.PlannedAdapter]:
    return plan.plan_adapters(server.name, server.spec, [])


def server_args(server: server_builders.Server) -> list[str]:
    deployment = server_builders.build_server_deployment(server, planned(server))
    ((_, args),) = vllm_args_of(deployment)
    return args


# Command lines vLLM must refuse, so a check that accepts everything can't pass.
REFUSED = {
    "misspelt flag": (["--model", "m", "--max-lora-ranks", "8"], "unrecognized arguments"),
    "rank vLLM 0.11 refuses": (
        ["--model", "m", "--enable-lora", "--max-lora-rank", "1", "--lora-modules", "a=/a"],
        "max_lora_rank (1) must be one of",
    ),
    "rank between allowed values": (
        ["--model", "m", "--enable-lora", "--max-lora-rank", "48"],
        "max_lora_rank (48) must be one of",
    ),
    "fewer CPU than GPU slots": (
        ["--model", "m", "--enable-lora", "--max-loras", "4", "--max-cpu-loras", "2"],
        "max_cpu_loras (2) must be >= max_loras (4)",
    ),
    "tensor parallel size not a number": (
        ["--model", "m", "--tensor-parallel-size", "two"],
        "invalid int value",
    ),
}


@functools.cache
def all_cases() -> dict[str, list[str]]:
    return {
        **golden_cases(),
        **{name: fine_tune_args(run) for name, run in FINE_TUNES.items()},
        **{name: server_args(server) for name, server in SERVERS.items()},
        **{f"refused: {name}": args for name, (args, _) in REFUSED.items()},
    }


@pytest.fixture(scope="module")
def vllm() -> dict[str, Any]:
    """vLLM's answer for :func:`all_cases`: its version, accepted ranks, one verdict each."""
    version = vllm_parser.chart_vllm_version()
    if not vllm_parser.is_installed(version):
        reason = (
            f"vLLM {version}'s parser is not installed in {vllm_parser.install_dir(version)}: "
            "run python hack/vllm_parser.py install (hack/setup.sh does)"
        )
        if os.environ.get("CI") == "true":
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)
    done = subprocess.run(
        [sys.executable, str(ROOT / "hack" / "vllm_parser.py"), "check", "--version", version],
        input=json.dumps(all_cases()),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert done.returncode == 0, f"vllm_parser.py check failed:\n{done.stderr[-4000:]}"
    answer: dict[str, Any] = json.loads(done.stdout)
    assert answer["vllm_version"] == version
    return answer


def flag_values(args: list[str]) -> dict[str, list[str]]:
    """Our own command line read back: each flag and the words after it up to the next."""
    values: dict[str, list[str]] = {}
    last = ""  # words before the first flag would be positionals: there are none
    for word in args:
        if word.startswith("--"):
            values[word] = []
            last = word
        else:
            values[last].append(word)
    return values


def expected_values(args: list[str]) -> dict[str, Any]:
    """What vLLM should read from ``args``, from the words we wrote (vLLM's defaults where a
    flag is absent: tensor parallel 1, --max-cpu-loras = --max-loras)."""
    f = flag_values(args)

    def one(flag: str) -> str | None:
        if flag not in f:
            return None
        (value,) = f[flag]
        return value

    def number(flag: str) -> int | None:
        value = one(flag)
        return None if value is None else int(value)

    lora = "--enable-lora" in f
    max_loras = (number("--max-loras") or 1) if lora else None
    modules = [word.split("=", 1) for word in f.get("--lora-modules", [])]
    return {
        "model": one("--model"),
        "served_model_name": f.get("--served-model-name"),
        "revision": one("--revision"),
        "tokenizer_revision": one("--tokenizer-revision"),
        "max_model_len": number("--max-model-len"),
        "tensor_parallel_size": number("--tensor-parallel-size") or 1,
        "trust_remote_code": "--trust-remote-code" in f,
        "enable_lora": lora,
        "max_lora_rank": number("--max-lora-rank") if lora else None,
        "max_loras": max_loras,
        "max_cpu_loras": (number("--max-cpu-loras") or max_loras) if lora else None,
        "lora_modules": modules,
        "host": one("--host"),
        "port": number("--port") or 8000,
    }


def accepted(vllm: dict[str, Any], name: str) -> dict[str, Any]:
    verdict = vllm["verdicts"][name]
    assert verdict["error"] is None, f"vLLM {vllm['vllm_version']} refuses {name}: {verdict}"
    values: dict[str, Any] = verdict["values"]
    return values


def smallest_fitting(vllm: dict[str, Any], rank: int) -> int:
    return int(min(allowed for allowed in vllm["lora_ranks"] if allowed >= rank))


def test_the_operators_lora_ranks_are_exactly_vllms(vllm: dict[str, Any]) -> None:
    assert list(vllm_serving.VLLM_MAX_LORA_RANKS) == vllm["lora_ranks"]


def test_goldens_hold_vllm_containers() -> None:
    # the four golden vLLM Deployments: two runs' own, a merged one, the model server's
    assert len(golden_cases()) >= 4, sorted(golden_cases())


BUILT = sorted(name for name in all_cases() if not name.startswith("refused: "))


@pytest.mark.parametrize("name", BUILT)
def test_vllm_accepts_and_reads_back(vllm: dict[str, Any], name: str) -> None:
    assert accepted(vllm, name) == expected_values(all_cases()[name])


@pytest.mark.parametrize("name", sorted(FINE_TUNES))
def test_fine_tune_settings_reach_vllm(vllm: dict[str, Any], name: str) -> None:
    run = FINE_TUNES[name]
    values = accepted(vllm, name)
    inference = run.spec.inference
    assert values["tensor_parallel_size"] == inference.gpus
    assert values["max_model_len"] == inference.max_model_len
    assert values["trust_remote_code"] == run.spec.model.trust_remote_code
    if serving.needs_merge(run):
        assert not values["enable_lora"]
        assert values["model"] == serving.build_serve_target(run).model
        assert values["served_model_name"] == [run.served_model_name]
        return
    assert values["enable_lora"] and values["max_loras"] == 1
    assert values["max_lora_rank"] == smallest_fitting(vllm, run.spec.lora.r)
    assert values["lora_modules"] == [[run.served_model_name, "/output/queued-lora"]]
    revision = run.spec.model.hub.revision if run.spec.model.hub else None
    assert values["revision"] == values["tokenizer_revision"] == revision


@pytest.mark.parametrize("name", sorted(SERVERS))
def test_model_server_settings_reach_vllm(vllm: dict[str, Any], name: str) -> None:
    server = SERVERS[name]
    spec = server.spec
    values = accepted(vllm, name)
    adapters = [a.status for a in planned(server) if a.accepted]
    assert len(adapters) == len(spec.adapters)  # every adapter joins: none above 512
    assert values["lora_modules"] == [[a.name, f"/adapters/adapters/{a.name}"] for a in adapters]
    largest = max(a.rank or 1 for a in adapters)
    limit = spec.vllm.max_lora_rank if spec.vllm else None
    assert values["max_lora_rank"] == smallest_fitting(vllm, limit or largest)
    assert values["max_lora_rank"] >= largest
    max_loras = (spec.vllm.max_loras if spec.vllm else None) or len(adapters)
    max_cpu_loras = spec.vllm.max_cpu_loras if spec.vllm else None
    assert values["max_loras"] == max_loras
    assert values["max_cpu_loras"] == (max_cpu_loras or max(len(adapters), max_loras))
    assert values["tensor_parallel_size"] == spec.gpus
    assert values["max_model_len"] == spec.max_model_len
    assert values["served_model_name"] == [server.name]
    assert values["revision"] == values["tokenizer_revision"] == BASE["hub"]["revision"]


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_vllm_refuses(vllm: dict[str, Any], name: str) -> None:
    verdict = vllm["verdicts"][f"refused: {name}"]
    _, why = REFUSED[name]
    assert verdict["values"] is None
    assert why in verdict["error"], verdict["error"]


@pytest.mark.parametrize("doc", ["docs/qwenfinetune.md", "docs/qwenmodelserver.md"])
def test_docs_name_the_vllm_version_checked(doc: str) -> None:
    version = vllm_parser.chart_vllm_version()
    assert f"parser of vLLM {version}" in (ROOT / doc).read_text(encoding="utf-8")
