# llmstream — every target bootstraps what it needs and is safe to run again.
SHELL := /bin/bash
.DEFAULT_GOAL := help

LLMSTREAM_HOME ?= $(HOME)/.cache/llmstream
PIP_CACHE_DIR ?= $(LLMSTREAM_HOME)/pip
export LLMSTREAM_HOME PIP_CACHE_DIR

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
PACKAGES := -p llmstream -p llmstream_inference -p llmstream_gateway -p llmstream_operator
PYTEST_ARGS ?=

.PHONY: help install demo test test-fast lint fmt clean tools model bench bench-inference bench-gateway gpu-check
.PHONY: bench-peers
.PHONY: bench-protocols bench-slow-consumers
.PHONY: cluster-bin cluster-bin-for-tests cluster-up
.PHONY: images image-base helm-lint chart-sync e2e push chart-push kind-up

help: ## list the targets
	@grep -hE '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-16s %s\n", $$1, $$2}'

install: $(STAMP) ## create .venv and install llmstream (editable) with every extra; a no-op when nothing changed

$(STAMP): pyproject.toml scripts/install-venv.sh
	@scripts/install-venv.sh $(VENV) $(PYTHON)
	@touch $@

tools: ## install the system tools the tests use (promtool, wscat, chromium, docker, the real node's) when possible
	@scripts/ensure-tools.sh promtool wscat chromium docker node

model: install ## provision the embedded default model (SmolLM2-135M-Instruct) into $(LLMSTREAM_HOME)
	@$(VENV)/bin/llmstream model pull-default

demo: install model ## run llmstream on its embedded default model
	@$(VENV)/bin/llmstream up

test: install tools model cluster-bin-for-tests ## run the whole test suite
	@$(VENV)/bin/pytest $(PYTEST_ARGS)

cluster-bin: install ## provision etcd, kube-apiserver/-controller-manager/-scheduler, kwok (pinned, built once into $(LLMSTREAM_HOME)), kubectl, helm
	@$(PY) -m tools.cluster bin

# `make test` provisions the control-plane tier when it can; without Go or prebuilt binaries
# the tier's tests skip naming what is missing (under CI=true both fail).
cluster-bin-for-tests: install
	@$(PY) -m tools.cluster bin --optional

cluster-up: cluster-bin ## run a local cluster (kwok GPU node + a real kubelet node) until Ctrl-C; prints the KUBECONFIG export
	@scripts/ensure-tools.sh node
	@$(PY) -m tools.cluster up

test-fast: install ## unit tests only (no default model, no external tools)
	@$(VENV)/bin/pytest -m 'not slow and not controlplane and not e2e' $(PYTEST_ARGS)

lint: install ## ruff check, ruff format --check, mypy --strict
	@$(VENV)/bin/ruff check .
	@$(VENV)/bin/ruff format --check .
	@$(VENV)/bin/mypy $(PACKAGES)

fmt: install ## format and auto-fix
	@$(VENV)/bin/ruff format .
	@$(VENV)/bin/ruff check --fix .

bench: bench-inference bench-gateway ## every benchmark (JSON + PNG under bench-results/)

bench-inference: install model ## inference engine vs thread-per-request vs static batch
	@$(VENV)/bin/python -m benchmarks.inference --out bench-results

bench-gateway: install ## gateway vs raw websockets relay vs direct: added latency, sustainable streams
	@$(VENV)/bin/python -m benchmarks.gateway --out bench-results

bench-peers: install model ## guidellm, inference-perf, aiperf (pinned, cached envs) vs gateway and direct
	@$(PY) -m tools.peers install
	@$(VENV)/bin/python -m benchmarks.peers --out bench-results

bench-protocols: install model ## WebSocket vs SSE vs REST through the gateway at 1, 8, 32 clients (latency, client CPU per token)
	@HF_HUB_OFFLINE=1 $(VENV)/bin/python -m benchmarks.protocols --out bench-results

bench-slow-consumers: install model ## 8 streams alone vs beside a client that never reads: their ITL p95 (target <= 1.2x) and the gateway's memory
	@HF_HUB_OFFLINE=1 $(VENV)/bin/python -m benchmarks.slow_consumers --out bench-results

gpu-check: install ## on a GPU machine: the CUDA tests + bench-inference in bfloat16 (offline, < 8 min); needs `make model` first
	@scripts/gpu-check.sh

clean: ## remove the venv and build outputs (the model cache in $(LLMSTREAM_HOME) stays)
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache bench-results
	find . -name __pycache__ -type d -prune -exec rm -rf {} +

# Images, chart and kind end-to-end tests (docs/install.md). TORCH_VARIANT=cpu|cuda,
# BAKE_DEFAULT_MODEL=true|false, BASE_IMAGE=auto|<image>, IMAGE_TAG are read by tools.images;
# so are REGISTRY, PLATFORMS (push) and CHART_REGISTRY (chart-push). kind-up: KIND_CLUSTER, KIND.
images: install ## build llmstream/{inference,gateway,operator} (BuildKit; debootstrap base where no registry)
	@nice -n 10 $(PY) -m tools.images build

image-base: install ## build the local debootstrap stand-in for python:3.11-slim (no registry needed)
	@$(PY) -m tools.images base

# push and chart-push need only the standard library: without a .venv (a release runner) they
# run on $(PYTHON), sparing the ~6 GB install.
TOOLS_PY = $(if $(wildcard $(PY)),$(PY),$(PYTHON))

push: ## push the built images as REGISTRY/<name>:<tag> (REGISTRY=host[:port]/org; with PLATFORMS=linux/amd64,linux/arm64 buildx builds and pushes)
	@$(TOOLS_PY) -m tools.images push --registry "$(REGISTRY)" $(if $(PLATFORMS),--platforms "$(PLATFORMS)")

chart-push: ## helm package + helm push the chart (CHART_REGISTRY=oci://host/org)
	@$(TOOLS_PY) -m tools.images chart-push --registry "$(CHART_REGISTRY)"

kind-up: images ## create (or reuse) a kind cluster from e2e/kind-config.yaml, load the images, print the helm steps
	@$(PY) -m tools.kind up

helm-lint: install ## helm lint + helm template checked by strict schemas (1.30, 1.35), offline
	@$(VENV)/bin/pytest tests/chart $(PYTEST_ARGS)

chart-sync: ## copy crds/ and operator/rbac/clusterrole.yaml into charts/llmstream (tests check equality)
	@cp crds/*.yaml charts/llmstream/crds/
	@cp operator/rbac/clusterrole.yaml charts/llmstream/files/operator-clusterrole.yaml

e2e: install tools cluster-bin ## end-to-end tests on kind, or else the local tier's real node (says which); fails, never skips, when neither can run
	@LLMSTREAM_E2E_REQUIRED=1 $(VENV)/bin/pytest -m e2e e2e $(PYTEST_ARGS)
