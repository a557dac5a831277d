#!/usr/bin/env bash
# Installs everything qwenft's demo and tests need, from scratch, and skips what is there.
#   - a Python virtual environment (QWENFT_VENV, default ~/.cache/qwenft/venv) with .[dev]
#   - the local control plane binaries (hack/build-cluster.sh, cached by version)
#   - vLLM's argument parser, of the chart's vLLM version, outside the venv (hack/vllm_parser.py)
# Safe to run again: a warm machine finishes in seconds.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${QWENFT_VENV:-$HOME/.cache/qwenft/venv}
PYTHON=${PYTHON:-python3}
stamp() { printf '[setup %s] %s\n' "$(date +%H:%M:%S)" "$*"; }

if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    echo "qwenft needs Python >= 3.11; $PYTHON is $("$PYTHON" --version)" >&2
    exit 1
fi
if [ ! -x "$VENV/bin/python" ]; then
    stamp "creating virtual environment $VENV"
    "$PYTHON" -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --upgrade pip
fi

# pip skips requirements that are already satisfied; the hash stamp skips pip entirely
# when pyproject.toml has not changed since the last install.
want=$(sha256sum pyproject.toml | cut -c1-16)
if [ "$(cat "$VENV/.qwenft-installed" 2>/dev/null)" != "$want" ] \
    || ! "$VENV/bin/python" -c 'import qwenft_operator, qwenft_trainer' 2>/dev/null; then
    stamp "installing qwenft[dev] into $VENV (first time: torch and friends, several minutes)"
    "$VENV/bin/pip" install --quiet --progress-bar off -e '.[dev]'
    echo "$want" > "$VENV/.qwenft-installed"
fi
# The editable install points at this checkout; re-point it when the checkout moved.
if [ "$("$VENV/bin/python" -c 'import qwenft_trainer, pathlib; print(pathlib.Path(qwenft_trainer.__file__).resolve().parents[2])')" != "$(pwd -P)" ]; then
    stamp "pointing the editable install at $(pwd -P)"
    "$VENV/bin/pip" install --quiet --no-deps -e .
fi
stamp "python environment ready: $VENV"

# DeepSpeed compiles its CPU ops at first use (minutes); build them once into the cache the
# trainer uses, so the first distributed test does not pay for it.
if [ "${QWENFT_SKIP_CLUSTER_BUILD:-0}" != 1 ]; then
    ext_dir=${TORCH_EXTENSIONS_DIR:-$HOME/.cache/qwenft/torch_extensions}
    if [ ! -e "$ext_dir/cpu_adam/cpu_adam.so" ] \
        || [ ! -e "$ext_dir/deepspeed_shm_comm/deepspeed_shm_comm.so" ]; then
        stamp "building DeepSpeed CPU ops into $ext_dir (once per machine, several minutes)"
        TORCH_EXTENSIONS_DIR=$ext_dir DS_ACCELERATOR=cpu "$VENV/bin/python" -c \
            "from deepspeed.accelerator import get_accelerator as a; [a().create_op_builder(n).load() for n in ('ShareMemCommBuilder', 'CPUAdamBuilder')]"
    fi
fi

# The tests parse every vLLM command line the operator builds with vLLM's own parser, of
# the release the chart deploys; it lives outside the venv (vLLM pins another torch).
# A 440 MB download once per vLLM version; installed, this takes a tenth of a second.
if [ "${QWENFT_SKIP_CLUSTER_BUILD:-0}" != 1 ]; then
    vllm_dir=$("$VENV/bin/python" hack/vllm_parser.py install)
    stamp "vLLM argument parser ready: $vllm_dir"
fi

if [ -x hack/build-cluster.sh ] && [ "${QWENFT_SKIP_CLUSTER_BUILD:-0}" != 1 ]; then
    bash hack/build-cluster.sh
fi
