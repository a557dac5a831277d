"""``qwenft run MANIFEST --local``: a whole QwenFineTune on this machine, no cluster.

The same manifest a user would ``kubectl apply`` goes through the same phases as in the
cluster, as local processes built from the same builders: the validator's, trainer's,
merge's and server's command lines come from ``qwenft_operator.builders`` and the trainer
config from ``build_train_config``, so a local run tests what the cluster will run.

    Validating  qwenft data validate (the dataset and its token counts)
    Training    qwenft_trainer.train, under torchrun when more than one process is asked for
    Merging     qwenft merge (when spec.merge.enabled)
    Deploying   qwenft serve on a free loopback port, until /readyz answers
    Ready       the spec's evaluationPrompts (or a greeting) sent to the endpoint

A ``model.path`` named ``tiny-qwen`` that does not exist yet is built first (the tiny
Qwen2 model of ``qwenft tiny-model``), which is what makes the quickstart self-contained.
``--arch`` runs the same manifest on the tiny model of another architecture, kept in a
directory of its own (``tiny-qwen-<arch>``, also built on first use) with its own output
directory (``<output.path>-<arch>``), so runs of different architectures never resume from
each other's checkpoints:

    qwenft run examples/quickstart-local.yaml --local
    qwenft run examples/quickstart-local.yaml --local --keep-serving   # then chat with it
    qwenft run examples/quickstart-local.yaml --local --arch qwen3_5   # multimodal Qwen3.5
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import sys
import time
from pathlib import Path

import httpx
from qwenft_trainer.tiny import TINY_ARCHS

from qwenft_operator import local_procs as procs
from qwenft_operator import smoke
from qwenft_operator.builders.config import build_train_config
from qwenft_operator.builders.merge import build_merge_args
from qwenft_operator.builders.serving import build_builtin_args, build_serve_target, needs_merge
from qwenft_operator.builders.validation import build_validation_args
from qwenft_operator.parsed_run import Run
from qwenft_operator.phases import Phase
from qwenft_operator.spec import ManifestError, load_manifest
from qwenft_operator.workloads import EvaluationPrompt

TINY_MODEL_NAME = "tiny-qwen"
DEFAULT_PROMPT = "Hello! What can you help me with?"


class LocalRunError(RuntimeError):
    """A phase failed; the message says which and why."""


def phase(name: Phase, detail: str = "") -> None:
    print(f"\n==> {name.value}{': ' + detail if detail else ''}", flush=True)


def local_problems(run: Run) -> list[str]:
    """Spec settings that only make sense in a cluster."""
    spec, problems = run.spec, []
    if spec.model.pvc is not None:
        problems.append("spec.model.pvc: a claim exists only in a cluster; use model.path")
    data = spec.dataset
    if data.path is None:
        problems.append(
            "spec.dataset: only dataset.path works locally (not a claim, ConfigMap or URL)"
        )
    if spec.output.path is None:
        problems.append("spec.output: set output.path to a local directory")
    if spec.resources.nodes != 1:
        problems.append(f"spec.resources.nodes is {spec.resources.nodes}; a local run has 1 node")
    return problems


def tiny_model_arch(path: str) -> str | None:
    """The architecture a tiny-model path stands for (``tiny-qwen``: qwen2), else None."""
    name = Path(path).name
    if name == TINY_MODEL_NAME:
        return "qwen2"
    arch = name.removeprefix(f"{TINY_MODEL_NAME}-")
    return arch if arch != name and arch in TINY_ARCHS else None


def with_tiny_arch(run: Run, arch: str) -> Run:
    """The run on the tiny model of ``arch``: its own model and output directories."""
    spec = run.spec
    path = spec.model.path
    if path is None or tiny_model_arch(path) is None:
        raise LocalRunError(
            f"--arch picks the architecture of the tiny model, but spec.model.path is {path}; "
            f"set model.path to a directory named {TINY_MODEL_NAME} or drop --arch"
        )
    if arch == "qwen2":
        return run
    assert spec.output.path is not None  # local_problems() refuses runs without one
    model = spec.model.model_copy(
        update={"path": str(Path(path).with_name(f"{TINY_MODEL_NAME}-{arch}"))}
    )
    output = spec.output.model_copy(update={"path": f"{spec.output.path.rstrip('/')}-{arch}"})
    return dataclasses.replace(run, spec=spec.model_copy(update={"model": model, "output": output}))


def ensure_model(run: Run) -> None:
    path = run.spec.model.path
    if path is None or Path(path).exists():
        return
    arch = tiny_model_arch(path)
    if arch is None:
        raise LocalRunError(f"spec.model.path {path} does not exist")
    label = "Qwen2" if arch == "qwen2" else arch
    print(f"building the tiny {label} model in {path} (first use)", flush=True)
    command = ["qwenft", "tiny-model", path, "--arch", arch]
    procs.run_step(procs.qwenft_command(command), "building the tiny model")


def build_local_train_command(run: Run, config_file: Path) -> list[str]:
    """The trainer's command line here: torchrun when more than one process is asked for."""
    nproc = max(run.spec.resources.gpus_per_node, 1)
    trainer = ["-m", "qwenft_trainer.train", "--config", str(config_file)]
    if nproc == 1:
        return [sys.executable, *trainer]
    launcher = ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc)]
    return [sys.executable, *launcher, *trainer]


def train(run: Run, output: Path) -> None:
    from qwenft_trainer.config import dump_config

    config = build_train_config(run).model_copy(
        update={"metrics_port": 0, "termination_log": str(output / "termination-log")}
    )
    config_file = output / "train.yaml"
    config_file.write_text(dump_config(config), encoding="utf-8")
    command = build_local_train_command(run, config_file)
    log = output / "logs" / "train.log"
    print(f"{' '.join(command[1:])}\nlog {log}", flush=True)
    procs.run_training(command, log=log)


def ask(url: str, model: str, prompt: EvaluationPrompt) -> str:
    """The endpoint's greedy answer, asked as the operator's smoke test asks (with retries)."""

    async def once() -> str:
        async with httpx.AsyncClient(timeout=300) as client:
            return await smoke.ask(client, url, model, prompt)

    try:
        return asyncio.run(once())
    except smoke.EndpointUnreachable as err:
        raise procs.StepError(str(err)) from err


def serve_and_ask(run: Run, output: Path, *, port: int | None, keep_serving: bool) -> None:
    args = build_builtin_args(run, build_serve_target(run))
    server = procs.start_server(
        procs.qwenft_command(args), log=output / "logs" / "serve.log", port=port
    )
    try:
        print(f"endpoint {server.url}/v1 (model '{run.served_model_name}')", flush=True)
        phase(Phase.READY, f"{server.url}/v1")
        prompts = run.spec.evaluation_prompts or [
            EvaluationPrompt(prompt=DEFAULT_PROMPT, max_tokens=32)
        ]
        answers = []
        for prompt in prompts:
            answer = ask(f"{server.url}/v1", run.served_model_name, prompt)
            print(f"  user:      {prompt.prompt}\n  assistant: {answer!r}", flush=True)
            answers.append(answer)
        # The same check the operator records as the SmokeTested condition.
        result = smoke.evaluate_answers(prompts, answers)
        if result.passed:
            print(f"smoke test: passed ({result.total} prompt(s))", flush=True)
        else:
            print(f"smoke test: {result.failed}/{result.total} failed: {result.message}")
        if keep_serving:
            print(
                f"\nserving until Ctrl-C; try:\n  curl {server.url}/v1/chat/completions "
                f"-H 'content-type: application/json' -d '{{\"model\": "
                f'"{run.served_model_name}", "messages": [{{"role": "user", '
                f'"content": "Hello"}}]}}\'',
                flush=True,
            )
            server.wait()
    finally:
        server.stop()


def run_local(
    manifest: Path,
    *,
    port: int | None = None,
    keep_serving: bool = False,
    arch: str | None = None,
) -> Run:
    """Run every phase of ``manifest``; raises :class:`LocalRunError` when one fails."""
    resource = load_manifest(manifest)
    run = Run(name=resource.metadata.name, namespace="local", uid="local", spec=resource.spec)
    problems = local_problems(run)
    if problems:
        raise LocalRunError("this manifest can't run locally:\n  " + "\n  ".join(problems))
    if arch is not None:
        run = with_tiny_arch(run, arch)
    spec = run.spec
    assert spec.output.path is not None
    output = Path(spec.output.path)
    (output / "logs").mkdir(parents=True, exist_ok=True)

    phase(Phase.VALIDATING, f"{spec.dataset.path} with the tokenizer of {spec.model.path}")
    ensure_model(run)
    procs.run_step(procs.qwenft_command(build_validation_args(run)), "dataset validation")

    phase(Phase.TRAINING, f"{spec.method}, {spec.training.max_steps} steps -> {output}")
    train(run, output)

    if needs_merge(run):
        phase(Phase.MERGING, f"{output} -> {output / 'merged'}")
        procs.run_step(procs.qwenft_command(build_merge_args(run)), "merge")

    if not spec.inference.enabled:
        phase(Phase.SUCCEEDED, f"outputs in {output}")
        return run
    if spec.inference.engine != "builtin":
        print(
            f"inference.engine {spec.inference.engine} runs in the cluster; serving locally "
            "with the built-in server instead"
        )
    phase(Phase.DEPLOYING, "qwenft serve")
    serve_and_ask(run, output, port=port, keep_serving=keep_serving)
    return run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="qwenft run", description=__doc__.splitlines()[0])
    parser.add_argument("manifest", type=Path, help="QwenFineTune YAML file")
    parser.add_argument("--local", action="store_true", help="run here, without a cluster")
    parser.add_argument("--port", type=int, help="server port (default: a free one)")
    parser.add_argument(
        "--keep-serving", action="store_true", help="keep the server up after the sample chat"
    )
    parser.add_argument(
        "--arch",
        choices=TINY_ARCHS,
        help=f"run on the tiny model of this architecture (model.path named {TINY_MODEL_NAME})",
    )
    args = parser.parse_args(argv)
    if not args.local:
        print(
            "qwenft run needs --local; to run in a cluster, kubectl apply -f the manifest",
            file=sys.stderr,
        )
        return 2
    started = time.monotonic()
    try:
        run = run_local(
            args.manifest, port=args.port, keep_serving=args.keep_serving, arch=args.arch
        )
    except (ManifestError, LocalRunError, procs.StepError) as err:
        print(f"\n==> {Phase.FAILED.value}: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    print(f"\nrun '{run.name}' done in {time.monotonic() - started:.0f}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
