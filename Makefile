# `make demo` installs the runtime set into .venv (created when absent); `make test` adds the test,
# evaluation and lint extras, then checks lint, formatting and types before the tests.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install -q --disable-pip-version-check -c constraints.txt
RUNTIME_STAMP := $(VENV)/.runtime-stamp
STAMP := $(VENV)/.installed-stamp
PIP_VERSION := 26.3
PYTEST_WORKERS ?= 2

.PHONY: install install-runtime data lint test docs quick-studies demo bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check pip==$(PIP_VERSION)

# The runtime set: what `littlehelp` itself needs to train, evaluate, decode and convert.
install-runtime: $(RUNTIME_STAMP)

$(RUNTIME_STAMP): pyproject.toml constraints.txt | $(PY)
	@echo "Installing the runtime set into $(VENV) (the first time: about 2 minutes, 3.4 GB)"
	$(PIP) -e .
	touch $(RUNTIME_STAMP)

# Everything: the runtime set plus the test (HF parity, pytest), eval (MAUVE), lint (ruff, mypy), wandb
# and docs (Sphinx) extras.
install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt | $(PY)
	@echo "Installing the runtime, test, eval, lint, wandb and docs sets into $(VENV) (the first time: a few minutes, 4.4 GB)"
	$(PIP) -e '.[test,eval,lint,wandb,docs]'
	touch $(RUNTIME_STAMP) $(STAMP)

# The data cache (Shakespeare corpus + sentencepiece vocabulary + the pretrained models the tests
# import; ~/.cache/littlehelp unless LITTLEHELP_DATA_DIR is set): built once, seconds when already there.
data: install
	$(PY) scripts/setup_data.py

# ruff (lint and formatting) on the whole tree and mypy on the core, configured in pyproject.toml.
lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

test: lint data
	$(PY) -m pytest -q -n $(PYTEST_WORKERS) --durations=15

# Every study's --quick run end to end (the language-model studies take minutes each on 2 cores).
quick-studies: install data
	$(PY) -m pytest -q -n $(PYTEST_WORKERS) -m '' tests/studies/test_quick_studies.py

# The demo reads the corpus and its vocabulary only: no pretrained models are fetched.
demo: install-runtime
	$(PY) scripts/setup_data.py --stats --corpus-only
	$(VENV)/bin/littlehelp train --gin_file=runs/demo.gin --gin.MODEL_DIR=runs/demo
	$(VENV)/bin/littlehelp infer --gin_file=runs/demo.gin --gin_file=runs/infer.gin --gin.MODEL_DIR=runs/demo --gin.NUM_EXAMPLES=4 --gin.inference.infer.spread=True --gin.inference.DecodingConfig.max_decode_length=32
	$(VENV)/bin/littlehelp report --model_dir=runs/demo

# The documentation site, strictly (a broken link, a page outside every toctree, an unresolved
# reference to littlehelp's API fails it): open docs/_build/html/index.html.
docs: install
	$(VENV)/bin/sphinx-build -W --keep-going -n -q -j 2 -b html docs docs/_build/html
	@echo "Built docs/_build/html/index.html"

bench: install
	$(PY) scripts/bench_train_step.py

clean:
	rm -rf $(VENV) runs
