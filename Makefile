# Quick start: `make demo` then `make test` on a fresh clone.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install -q -c constraints.txt
SHARED_DATA := $(abspath ../shared/data)
ifeq ($(origin SCETM_MNN_DATA), undefined)
ifneq ($(wildcard $(SHARED_DATA)),)
export SCETM_MNN_DATA := $(SHARED_DATA)
endif
endif

.PHONY: demo test lint docs bench-env bench clean

$(VENV)/.installed: pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) -e .
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed
	$(PIP) -e ".[dev]"
	touch $@

$(VENV)/.installed-docs: $(VENV)/.installed
	$(PIP) -e ".[docs]"
	touch $@

$(VENV)/.installed-bench: $(VENV)/.installed
	$(PIP) -e ".[bench]"
	touch $@

demo: $(VENV)/.installed
	$(VENV)/bin/scetm-mnn demo --out demo_output

test: $(VENV)/.installed-dev
	$(PY) -m pytest

lint: $(VENV)/.installed-dev
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks

docs: $(VENV)/.installed-docs
	$(VENV)/bin/sphinx-build -W --keep-going -b html docs docs/_build/html

# The original scETM 0.5.0 lives in its own venv so that it cannot change ours.
.venv-scetm/.installed: constraints.txt
	test -x .venv-scetm/bin/python || $(PYTHON) -m venv .venv-scetm
	.venv-scetm/bin/python -m pip install -q -c constraints.txt torch anndata scanpy pandas numpy scipy scikit-learn matplotlib seaborn tqdm psutil tensorboard leidenalg igraph
	.venv-scetm/bin/python -m pip install -q --no-deps scETM==0.5.0
	touch $@

bench-env: $(VENV)/.installed-bench .venv-scetm/.installed

bench: bench-env
	$(PY) benchmarks/throughput.py
	$(PY) benchmarks/corrector.py
	$(PY) benchmarks/pancreas.py

clean:
	rm -rf $(VENV) .venv-scetm demo_output docs/_build
