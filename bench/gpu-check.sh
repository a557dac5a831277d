#!/usr/bin/env bash
# The prepared GPU check: every GPU-only path of qwenft, in one call, one table at the end.
#
#   bash bench/gpu-wheels.sh     # first, on a machine with PyPI access (bench/wheels/, git-ignored)
#   bash bench/gpu-check.sh      # on the GPU machine: no network needed
#
# Steps (each under its own time limit; a failing step is reported and the next one runs):
#   env          the GPU, driver and library versions
#   install      what the GPU machine lacks, from bench/wheels/ only (--no-index)
#   lora-8b      bench_train.py, LoRA bf16 on random weights in Qwen3-8B's shape, 4096-token
#                packed rows, qwenft against TRL's SFTTrainer (tokens/s, MFU, peak memory)
#   qlora-8b     the same shape, Q-LoRA (4-bit NF4 base), gradient checkpointing, qwenft only:
#                its goal is peak GPU memory under 12 GiB (TRL's Q-LoRA arm is left out to fit
#                the budget: another 16 GB load and quantization)
#   moe          Qwen3-30B-A3B's shape at 4 layers (128 experts, 8 routed), qwenft LoRA bf16
#   qwen3.5      Qwen3.5's hybrid text model at 4 layers (3 Gated DeltaNet + 1 attention)
#   zero2        DeepSpeed ZeRO-2 under torchrun on one GPU over NCCL, Qwen2.5-1.5B's shape
#   gpu          every test marked `gpu` (tests/trainer/test_train_gpu.py, CUDA Q-LoRA,
#                packed rows under flex_attention, varlen packing kernels, ...)
#   serve        bench_serve.py on random weights in Qwen2.5-0.5B's shape against a generate loop
# Raw output of every step goes to $QWENFT_BENCH_OUT (default bench/out/): <step>.log, each
# benchmark's results.json and arm logs under <step>/, pytest's junit XML, and steps.tsv
# (step, status, seconds). Models and training outputs stay in $QWENFT_GPU_SCRATCH (default
# /tmp/qwenft-gpu-check; ~25 GB, the 8B model is built once and reused).
# Budget: the limits sum to 470 s, estimated for one H200 (Qwen3-8B: 6N + attention = 46
# GFLOP per token, ~3,500 tokens/s at 40% of ~400 TFLOP/s; building and saving its 16 GB of
# random weights dominates that step); QWENFT_GPU_CHECK_SCALE=0.5 halves the sample counts.
# A benchmark step whose goals are missed exits 1 and reads "failed (1)".
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
OUT=${QWENFT_BENCH_OUT:-bench/out}
SCRATCH=${QWENFT_GPU_SCRATCH:-/tmp/qwenft-gpu-check}
SCALE=${QWENFT_GPU_CHECK_SCALE:-1}
PY=${PYTHON:-python3}
mkdir -p "$OUT" "$SCRATCH"
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

step env 10 bash -c "nvidia-smi; $PY -c 'import torch, transformers, peft; \
print(torch.__version__, torch.version.cuda, torch.cuda.get_device_name(0)); \
print(\"transformers\", transformers.__version__, \"peft\", peft.__version__)'"
# timeout runs programs, not shell functions: the step runs the function in a child bash.
export -f install_missing
export PY
step install 30 bash -c install_missing

train() {  # train STEP ARGS...: bench_train.py on CUDA, keeping its results and arm logs
    local name=$1 work="$SCRATCH/$1"
    shift
    step "$name" "$@" --device cuda --model-dir "$SCRATCH/models" --workdir "$work"
    mkdir -p "$OUT/$name"
    cp "$work"/results.json "$work"/*.log "$OUT/$name/" 2>/dev/null
}
train lora-8b 120 "$PY" bench/bench_train.py --model-arch qwen3-8b --arms qwenft,trl \
    --no-eval --samples "$(scaled 240)" --max-seq-length 4096 --rows-per-batch 1
train qlora-8b 60 "$PY" bench/bench_train.py --model-arch qwen3-8b --method qlora \
    --arms qwenft --no-eval --samples "$(scaled 120)" --max-seq-length 4096 \
    --rows-per-batch 1 --gradient-checkpointing
train moe 40 "$PY" bench/bench_train.py --model-arch qwen3-30b-a3b-reduced --arms qwenft \
    --no-eval --samples "$(scaled 120)" --max-seq-length 4096 --rows-per-batch 1
train qwen3.5 40 "$PY" bench/bench_train.py --model-arch qwen3.5-reduced --arms qwenft \
    --no-eval --samples "$(scaled 120)" --max-seq-length 4096 --rows-per-batch 1
train zero2 45 "$PY" bench/bench_train.py --model-arch qwen2.5-1.5b --deepspeed-zero 2 \
    --arms qwenft --no-eval --samples "$(scaled 40)" --max-seq-length 2048 --rows-per-batch 1
step gpu 90 "$PY" -m pytest -m gpu -q -p no:cacheprovider -o addopts="" \
    --junitxml "$OUT/gpu-tests.xml" tests
step serve 35 "$PY" bench/bench_serve.py --model-arch qwen2.5-0.5b --device cuda \
    --requests "$(scaled 32)" --work-dir "$SCRATCH/serve"

echo
echo "| step | status | seconds |"
echo "| --- | --- | --- |"
while IFS=$'\t' read -r name status seconds; do
    echo "| $name | $status | $seconds |"
done < "$OUT/steps.tsv"
for name in lora-8b qlora-8b moe qwen3.5 zero2 serve; do
    [ -f "$OUT/$name.log" ] || continue
    echo
    echo "### $name"
    grep -E '^(\||goal |MFU: |qwen|tiny)' "$OUT/$name.log"
done
! grep -qv $'\tok\t' "$OUT/steps.tsv"
