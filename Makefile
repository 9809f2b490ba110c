# `make run`: install into .venv and run the whole pipeline on config/config.yaml.
# `make test`: install into .venv and run the test suite.
PYTHON ?= python3
VENV ?= .venv
STAMP := $(VENV)/.installed

.PHONY: run test lint clean-results

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -c constraints.txt -e ".[test]"
	touch $(STAMP)

run: $(STAMP)
	$(VENV)/bin/snakemake --cores all

test: $(STAMP)
	$(VENV)/bin/pytest

lint: $(STAMP)
	$(VENV)/bin/snakemake --lint
	$(VENV)/bin/snakemake -n

clean-results:
	rm -rf results/*/ results/mlflow.db results/mlartifacts
