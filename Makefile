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

# The hypothesis fuzzing of every input check at 500 examples per property (CI runs 50).
fuzz: $(VENV)/.installed-dev
	$(PY) -m pytest -m slow -q tests/test_fuzz.py

# The full kill suite (tests/faults/_killer.py: >= 50 SIGKILLs across the phases of
# `scetm-mnn run`, each run resumed with --resume); its table goes into docs/reliability.md.
faults: $(VENV)/.installed-dev
	PYTHONPATH=src $(PY) tests/faults/_killer.py --kills 50

.PHONY: fuzz faults demo test lint dist-check docs docs-offline docs-cli bench-env bench clean

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
	$(PY) -c "import harmonypy, jax.numpy as jnp, scib_metrics; assert float(jnp.ones(2).sum()) == 2"
	touch $@

demo: $(VENV)/.installed
	$(VENV)/bin/scetm-mnn demo --out demo_output

test: $(VENV)/.installed-dev
	$(PY) -m pytest

lint: $(VENV)/.installed-dev
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks

# Build the sdist and the wheel, check their metadata (twine), install the wheel into a fresh
# venv and import it there, outside the source tree (.ci/check_dist.py). By default the wheel
# goes in with --no-deps and a .pth file lets the fresh venv find its dependencies in .venv,
# after its own site-packages (a full install pulls torch: minutes). For a full install:
# make dist-check DIST_DEPS= DIST_PIP_ARGS="-c constraints.txt".
DIST_VENV ?= dist/venv
DIST_DEPS ?= --no-deps
DIST_PIP_ARGS ?=
PURELIB := import sysconfig; print(sysconfig.get_paths()['purelib'])
dist-check: $(VENV)/.installed-dev
	rm -rf dist
	$(PY) -m build --outdir dist .
	$(PY) -m twine check --strict dist/*.tar.gz dist/*.whl
	$(PYTHON) -m venv --without-pip $(DIST_VENV)
	$(PY) -m pip --python $(DIST_VENV)/bin/python install -q $(DIST_DEPS) $(DIST_PIP_ARGS) \
		dist/*.whl
	$(if $(DIST_DEPS),$(PY) -c "$(PURELIB)" \
		> "$$($(DIST_VENV)/bin/python -c "$(PURELIB)")/scetm_mnn_dist_check_deps.pth")
	cd $(DIST_VENV) && env -u PYTHONPATH bin/python $(CURDIR)/.ci/check_dist.py $(CURDIR)/dist/*.whl

# Warnings are errors and every cross-reference must resolve (nitpicky). Intersphinx links
# to python, numpy, scanpy, scvi-tools, ... when their sites can be reached (docs/conf.py
# probes once); docs-offline skips the probe, as on machines without internet.
docs: $(VENV)/.installed-docs
	$(VENV)/bin/sphinx-build -W --keep-going -b html docs docs/_build/html

docs-offline: $(VENV)/.installed-docs
	SCETM_MNN_DOCS_OFFLINE=1 $(VENV)/bin/sphinx-build -W --keep-going -b html docs docs/_build/html

# Rewrite the help texts kept in docs/cli.md from the parser (tests/test_docs.py checks them).
docs-cli: $(VENV)/.installed
	$(PY) docs/_scripts/cli_help.py

# The original scETM 0.5.0 lives in its own venv so that it cannot change ours. These are
# the packages it imports (tensorboard for torch.utils.tensorboard), at a tested working set;
# pandas must stay < 3 (scETM indexes a Series by position).
SCETM_DEPS := torch==2.13.0 numpy==2.4.6 pandas==2.3.3 scipy==1.17.1 anndata==0.12.19 \
	scanpy==1.11.5 scikit-learn==1.9.1 h5py==3.16.0 matplotlib==3.11.2 tqdm==4.70.1 \
	psutil==7.2.2 joblib==1.6.0 tensorboard==2.21.0
.venv-scetm/.installed: constraints.txt
	test -x .venv-scetm/bin/python || $(PYTHON) -m venv .venv-scetm
	.venv-scetm/bin/python -m pip install -q -c constraints.txt $(SCETM_DEPS)
	.venv-scetm/bin/python -m pip install -q --no-deps scETM==0.5.0
	.venv-scetm/bin/python -c "from scETM import UnsupervisedTrainer, scETM"
	touch $@

bench-env: $(VENV)/.installed-bench .venv-scetm/.installed

bench: bench-env
	$(PY) benchmarks/throughput.py
	$(PY) benchmarks/corrector.py
	$(PY) benchmarks/pancreas.py
	OMP_NUM_THREADS=1 $(PY) benchmarks/mapping.py

clean:
	rm -rf $(VENV) .venv-scetm demo_output docs/_build dist
