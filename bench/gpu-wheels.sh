#!/usr/bin/env bash
# Prepares the wheels bench/gpu-check.sh installs on a GPU machine that has no network.
#
#   bash bench/gpu-wheels.sh            # on a machine that reaches PyPI; writes bench/wheels/
#
# The GPU machine already has PyTorch, transformers and peft; this fetches what the trainer's
# GPU paths and the GPU tests add on top (bitsandbytes' CUDA build, Liger Kernel,
# flash-linear-attention, TRL for the peer baseline, DeepSpeed's source, pytest plugins),
# without their dependencies, as linux x86_64 wheels. The folder is git-ignored and must stay
# within the 64 MiB a device call carries; the script fails when it does not.
set -euo pipefail
cd "$(dirname "$0")/.."
out=bench/wheels
limit=$((64 * 1024 * 1024))
PIP=${PIP:-${QWENFT_VENV:-$HOME/.cache/qwenft/venv}/bin/pip}
mkdir -p "$out"
# Binary wheel: bitsandbytes ships one manylinux wheel for every Python 3 version.
"$PIP" download --quiet --no-deps --only-binary=:all: --platform manylinux_2_24_x86_64 \
    --python-version 3.12 -d "$out" "bitsandbytes>=0.45"
# Pure-Python wheels.
"$PIP" download --quiet --no-deps --only-binary=:all: -d "$out" \
    liger-kernel flash-linear-attention fla-core "trl>=1.0" pytest-timeout prometheus-client \
    hjson py-cpuinfo
# msgpack (a DeepSpeed dependency) is binary: one wheel per likely Python version.
for version in 3.11 3.12 3.13; do
    "$PIP" download --quiet --no-deps --only-binary=:all: --platform manylinux_2_28_x86_64 \
        --python-version "$version" -d "$out" msgpack
done
# DeepSpeed publishes a source archive only; gpu-check.sh builds it without compiled ops.
"$PIP" download --quiet --no-deps --no-binary=:all: -d "$out" "deepspeed>=0.16"
size=$(du -sb "$out" | cut -f1)
ls -la "$out"
echo "bench/wheels: $((size / 1024 / 1024)) MiB"
if [ "$size" -gt "$limit" ]; then
    echo "bench/wheels is over the 64 MiB a device call carries; drop a wheel" >&2
    exit 1
fi
