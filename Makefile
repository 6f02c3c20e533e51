# `make test` and `make demo` create .venv when absent and install the pinned set first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
PIP_VERSION := 26.3
PYTEST_WORKERS ?= 2

.PHONY: install data test quick-studies demo bench clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check pip==$(PIP_VERSION)
	$(PY) -m pip install -q -c constraints.txt -e '.[test,eval]'
	touch $(STAMP)

# The data cache (Shakespeare corpus + sentencepiece vocabulary; ~/.cache/littlehelp unless
# LITTLEHELP_DATA_DIR is set): downloaded and trained once, seconds when already there.
data: install
	$(PY) scripts/setup_data.py

test: install data
	$(PY) -m pytest -q -n $(PYTEST_WORKERS) --durations=15

# Every study's --quick run end to end (the language-model studies take minutes each on 2 cores).
quick-studies: install data
	$(PY) -m pytest -q -n $(PYTEST_WORKERS) -m '' tests/studies/test_quick_studies.py

demo: install
	$(PY) scripts/setup_data.py --stats
	$(VENV)/bin/littlehelp train --gin_file=runs/demo.gin --gin.MODEL_DIR=runs/demo
	$(VENV)/bin/littlehelp infer --gin_file=runs/demo.gin --gin_file=runs/infer.gin --gin.MODEL_DIR=runs/demo --gin.NUM_EXAMPLES=4 --gin.inference.DecodingConfig.max_decode_length=32

bench: install
	$(PY) scripts/bench_train_step.py

clean:
	rm -rf $(VENV) runs
