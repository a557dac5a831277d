#!/usr/bin/env bash
# The whole test suite: lint, type checks, then every pytest test (trainer, operator, e2e).
# Extra arguments go to pytest, e.g. `hack/test.sh -m "not e2e" -k lora`.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${QWENFT_VENV:-$HOME/.cache/qwenft/venv}
export PATH="$VENV/bin:$PATH"

echo "== ruff"
ruff check operator trainer tests bench hack
ruff format --check operator trainer tests bench hack
echo "== mypy"
mypy operator/qwenft_operator trainer/qwenft_trainer
echo "== pytest"
exec python -m pytest "$@"
