# Quick start:  make run   (set up .venv, launch the app on the embedded demo)
#               make test  (set up .venv, run the whole test suite incl. the browser test)
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
REQ_HASH := $(shell cat requirements.txt requirements-dev.txt pyproject.toml | sha1sum | cut -c1-10)
STAMP := $(VENV)/.installed-$(REQ_HASH)
PORT ?= 8501

.PHONY: run test test-fast lint bench browser-deps demo clean help

help:
	@echo "make run | test | test-fast | lint | bench | demo | clean"

$(STAMP): requirements.txt requirements-dev.txt pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# One pip command for all pins (torch==2.13.0 takes the local CPU wheel).
	$(BIN)/python -m pip install -q -r requirements-dev.txt
	$(BIN)/python -m pip install -q --no-deps --no-build-isolation -e .
	rm -f $(VENV)/.installed-*
	touch $@

run: $(STAMP)
	$(BIN)/streamlit run app.py --server.port $(PORT)

# Debian's chromium for the Playwright test (never `playwright install`: no downloads here).
browser-deps:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq chromium chromium-driver >/dev/null; \
	  else echo "chromium missing: run 'sudo apt-get install -y chromium chromium-driver' for the browser test"; exit 1; fi; }

# The linter and the import contracts (pyproject.toml) first: a layering break fails fast.
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/lint-imports

test: $(STAMP) browser-deps lint
	$(BIN)/python -m pytest -q

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not browser and not slow"

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_virtual.py
	$(BIN)/python benchmarks/bench_app.py
	$(BIN)/python benchmarks/bench_predict.py
	$(BIN)/python benchmarks/bench_render.py
	$(BIN)/python benchmarks/bench_labels.py
	$(BIN)/python benchmarks/bench_paper_preprocessing.py
	$(BIN)/python benchmarks/bench_external.py

demo: $(STAMP)
	$(BIN)/polmap simulate --preset demo --out demo.h5

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
