# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
AI4HI  := $(VENV)/bin/ai4hi
STAMP  := $(VENV)/.ai4hi-installed
DEMO   ?= demo_workspace
# CPU wheel that lies on disk here; a GPU site installs its own CUDA build (see README).
TORCH_SPEC ?= torch==2.13.0

.PHONY: venv demo lint test test-fast bench clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[test]"
	touch $(STAMP)

demo: $(STAMP)
	$(AI4HI) data synth $(DEMO)/data --sites 3 --studies-per-site 200 --seed 0 --overwrite
	rm -rf $(DEMO)/run  # fresh sites: the regenerated data would otherwise meet its spent privacy budget
	$(AI4HI) job simulate jobs/cxr_classification.yaml --data-root $(DEMO)/data --workspace $(DEMO)/run
	# continuous loop: train -> validate everywhere -> decide -> drift at one site -> monitor -> retrain -> decide
	$(AI4HI) continuous run jobs/continuous.yaml --data-root $(DEMO)/loop_data --workspace $(DEMO)/loop

# static checks: lint, types (mypy over the whole package), run before every test run
lint: $(STAMP)
	$(VENV)/bin/ruff check ai4hi_sdk tests benchmarks docs/examples
	$(VENV)/bin/mypy ai4hi_sdk

test: lint
	$(PY) -m pytest

test-fast: $(STAMP)
	$(PY) -m pytest -m "not e2e and not deploy"

bench: $(STAMP)
	$(PY) benchmarks/round_overhead.py

clean:
	rm -rf $(DEMO) .pytest_cache
