# Setup and common jobs. `make install` builds .venv (torch pinned to the local CPU build).
PY ?= .venv/bin/python
PIP ?= .venv/bin/pip
export POLYCOM_DATA_DIR ?= $(abspath ../shared/data)

.PHONY: install test test-fast train smoke bench clean

install: .venv/.installed

.venv/.installed: requirements.txt pyproject.toml
	test -d .venv || python3 -m venv .venv
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet -r requirements.txt
	$(PIP) install --quiet --no-deps -e .
	touch $@

test: install
	$(PY) -m pytest -q

test-fast: install
	$(PY) -m pytest -q -m "not slow"

train: install
	$(PY) train.py $(ARGS)

smoke: install
	$(PY) train.py debug=smoke logger=none $(ARGS)

bench: install
	$(PY) scripts/benchmark.py $(ARGS)

clean:
	rm -rf outputs multirun .pytest_cache
