# `make demo` and `make test` set everything up on a fresh machine: a .venv, torch, and the project.
# Users with a GPU create .venv and install their own CUDA torch into it first; it is kept.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH ?= torch==2.13.0

MONAILABEL_APP := apps/monailabel_registration

.PHONY: setup monailabel demo lint test clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e ".[test]"
	touch $@

# MONAI Label's server, beside the project's torch (see $(MONAILABEL_APP)/README.md for why --no-deps)
monailabel: $(VENV)/.monailabel

$(VENV)/.monailabel: $(VENV)/.installed $(MONAILABEL_APP)/requirements.txt
	$(PY) -m pip install -q -r $(MONAILABEL_APP)/requirements.txt
	$(PY) -m pip install -q --no-deps monailabel==0.8.5 pydicom-seg==0.4.1
	touch $@

demo: setup
	$(PY) -m regplugins demo --out demo_out

# ruff, as configured in pyproject.toml: `ruff format .` fixes what the second line reports
lint: setup
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

# the slowest tests named at the end, to keep the suite within its 20 minutes on 2 cores
test: setup monailabel
	$(PY) -m pytest -q --durations=15

clean:
	rm -rf demo_out .pytest_cache
