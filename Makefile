# Set-up and the two main jobs. `make demo` and `make test` each create .venv and install everything first.
SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -c
PYTHON ?= python3
VENV ?= .venv
# The CPU build of PyTorch; override on a GPU machine, e.g. `make test TORCH=torch`.
TORCH ?= torch==2.13.0
PIP_QUIET = 2>&1 | { grep -v -e '^WARNING: Location' -e '^\[notice\]' || test $$? -eq 1; }

.PHONY: setup demo cpu-study design-study udpos-study test test-fast lint bench browser clean
setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -q "$(TORCH)" $(PIP_QUIET)
	$(VENV)/bin/python -m pip install -q -e ".[test,ray]" $(PIP_QUIET)
	$(VENV)/bin/python -c "import torch, transformers, xlgm; print('xlgm', xlgm.__version__, 'torch', torch.__version__)"
	touch $@

demo: setup
	$(VENV)/bin/xlgm demo

# The converged CPU study (studies/xnli-e5-cpu.yaml): about 2 hours on 2 cores; rerun to resume.
cpu-study: setup
	time $(VENV)/bin/xlgm study run studies/xnli-e5-cpu.yaml --analyze

# The designed CPU study (studies/xnli-e5-design.yaml): 27 runs, measure data sizes and sharpness-diff's σ swept;
# about 3 h 50 min on 2 cores (estimated in the spec); rerun to resume.
design-study: setup
	time $(VENV)/bin/xlgm study run studies/xnli-e5-design.yaml --analyze

# The UD-POS token-task study (studies/udpos-e5-cpu.yaml): 24 runs, 37 languages; about 1.5 hours on 2 cores
# (estimated in the spec); rerun to resume.
udpos-study: setup
	time $(VENV)/bin/xlgm study run studies/udpos-e5-cpu.yaml --analyze

test: setup
	$(VENV)/bin/python -m pytest -q

test-fast: setup
	$(VENV)/bin/python -m pytest -q -m "not slow"

# Import layers, lint, format and types (configured in pyproject.toml).
lint: setup
	$(VENV)/bin/lint-imports
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/ruff format --check src tests bench
	$(VENV)/bin/mypy src

# Headless Chromium for the report's layout test (tests/study/test_report_browser.py), from Debian's packages;
# quick when it is there. Without it (not root, no apt) that test skips.
browser:
	command -v chromium >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } || echo "chromium not installed: the report layout test will skip"

bench: setup
	$(VENV)/bin/python bench/eval_throughput.py

clean:
	rm -rf $(VENV) runs .pytest_cache
