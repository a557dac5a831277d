#!/usr/bin/env bash
# The prepared GPU check: every GPU-only path of qwenft, in one call, one table at the end.
#
#   bash bench/gpu-wheels.sh     # first, on a machine with PyPI access (bench/wheels/, git-ignored)
#   bash bench/gpu-check.sh      # on the GPU machine: no network needed
#
# Steps (each under its own time limit; a failing step is reported and the next one runs):
#   env      the GPU, driver and library versions
#   install  what the GPU machine lacks, from bench/wheels/ only (--no-index)
#   gpu      every test marked `gpu` (CUDA Q-LoRA, ZeRO-2 over NCCL, packed rows under
#            flex_attention, varlen packing kernels, ...)
#   train    bench_train.py on random weights in Qwen2.5-1.5B's shape, bf16, against the
#            padded Qwen-recipe baseline (tokens/s, MFU, peak GPU memory)
#   serve    bench_serve.py on random weights in Qwen2.5-0.5B's shape against a generate loop
# Raw output of every step goes to $QWENFT_BENCH_OUT (default bench/out/): <step>.log, the
# benchmarks' results.json, pytest's junit XML, and steps.tsv (step, status, seconds).
# Budget: about 8 minutes on one H100/H200; QWENFT_GPU_CHECK_SCALE=0.5 halves the benchmarks.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${QWENFT_BENCH_OUT:-bench/out}
SCALE=${QWENFT_GPU_CHECK_SCALE:-1}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
: > "$OUT/steps.tsv"
export PYTHONPATH="$PWD/operator:$PWD/trainer${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false

scaled() { "$PY" -c "print(max(1, int($1 * $SCALE)))"; }

step() {  # step NAME SECONDS COMMAND...: run, log, record status and time
    local name=$1 limit=$2 started rc status
    shift 2
    started=$(date +%s)
    echo "== $name (limit ${limit}s): $*"
    timeout --signal=TERM --kill-after=15 "$limit" "$@" > "$OUT/$name.log" 2>&1
    rc=$?
    case $rc in
        0) status=ok ;;
        124 | 137) status="timed out" ;;
        *) status="failed ($rc)" ;;
    esac
    printf '%s\t%s\t%s\n' "$name" "$status" "$(($(date +%s) - started))" >> "$OUT/steps.tsv"
    tail -n 25 "$OUT/$name.log"
}

install_missing() {
    local wanted=(bitsandbytes liger_kernel fla trl pytest_timeout prometheus_client msgpack)
    local wheel
    for wheel in bench/wheels/*.whl; do  # one by one: a wheel for another Python is skipped
        "$PY" -m pip install --quiet --no-index --no-deps "$wheel" 2>&1 | tail -n 1
    done
    if ! "$PY" -c 'import deepspeed' 2>/dev/null; then
        DS_BUILD_OPS=0 "$PY" -m pip install --no-index --no-build-isolation --no-deps \
            bench/wheels/deepspeed-*.tar.gz 2>&1 | tail -n 5
    fi
    for module in "${wanted[@]}" deepspeed; do
        "$PY" -c "import $module" 2>/dev/null && echo "import $module: ok" \
            || echo "import $module: MISSING"
    done
}

step env 60 bash -c "nvidia-smi; $PY -c 'import torch, transformers, peft; \
print(torch.__version__, torch.version.cuda, torch.cuda.get_device_name(0)); \
print(\"transformers\", transformers.__version__, \"peft\", peft.__version__)'"
step install 180 install_missing
step gpu 240 "$PY" -m pytest -m gpu -q -p no:cacheprovider -o addopts="" \
    --junitxml "$OUT/gpu-tests.xml" tests
step train 240 "$PY" bench/bench_train.py --model-arch qwen2.5-1.5b --device cuda \
    --samples "$(scaled 600)" --max-seq-length 2048 --rows-per-batch 4 \
    --baseline-batch-size 16 --workdir "$OUT/train"
step serve 120 "$PY" bench/bench_serve.py --model-arch qwen2.5-0.5b --device cuda \
    --requests "$(scaled 64)" --work-dir "$OUT/serve"

echo
echo "| step | status | seconds |"
echo "| --- | --- | --- |"
while IFS=$'\t' read -r name status seconds; do
    echo "| $name | $status | $seconds |"
done < "$OUT/steps.tsv"
grep -E '^\|' "$OUT/train.log" "$OUT/serve.log" 2>/dev/null | sed 's/^[^|]*|/|/'
! grep -qv $'\tok\t' "$OUT/steps.tsv"
