# qwenft developer entry points. Each target installs what it needs first.
# QWENFT_VENV from the environment wins, as in hack/setup.sh and hack/test.sh.
VENV ?= $(or $(QWENFT_VENV),$(HOME)/.cache/qwenft/venv)
export QWENFT_VENV := $(VENV)

.PHONY: setup demo test
setup:
	bash hack/setup.sh

# Fine-tune, merge and serve a tiny Qwen2 model locally from examples/quickstart-local.yaml.
demo:
	QWENFT_SKIP_CLUSTER_BUILD=1 bash hack/setup.sh
	$(VENV)/bin/qwenft run examples/quickstart-local.yaml --local

# Lint, type-check and run every test (the control plane is started by the tests).
test: setup
	bash hack/test.sh
