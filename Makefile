# One command sets everything up and runs: `make demo`, `make test`.
# The virtual environment is created on first use; pass VENV=/path/to/env to use one you already have
# (ligo never reinstalls a torch that is already there).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_PIN ?= torch==2.13.0

.PHONY: install test demo bench-cpu clean

$(VENV)/.ligo-installed: pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "$(TORCH_PIN)"
	$(PY) -m pip install -q -e ".[dev]"
	@touch $@

install: $(VENV)/.ligo-installed

test: install
	$(PY) -m pytest -q -n 2

demo: install
	$(VENV)/bin/ligo demo

bench-cpu: install
	$(VENV)/bin/ligo bench benchmarks/experiments/cpu-tiny.yaml

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
