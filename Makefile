# The two commands of the README: `make demo` and `make test`. Both set up .venv first
# (pinned versions from constraints.txt; torch comes from this machine's wheel cache).
# `make test-fast` is the inner loop: the tests that need no Ray; `make lint` is ruff.
# `make test` runs the whole suite in one pytest process with one local Ray for the integration
# tests, as every green CI run has (docs/performance.md). TEST_WORKERS=2 runs it on two
# pytest-xdist workers, each with a Ray of its own: CI once lost a worker in that mode to a crash
# no local run has reproduced. `make test-fast` starts no Ray and runs on two workers.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.itemlens-installed
TEST_WORKERS ?= 0
XDIST := -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder

.PHONY: demo test test-fast lint bench setup clean

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python examples/demo.py --store ./lens

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest $(XDIST) --no-skips --durations=15

test-fast: $(STAMP)
	$(BIN)/python -m pytest -n 2 --dist loadfile -m "not integration" --durations=10

lint: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

bench: $(STAMP)
	$(BIN)/python bench/ingest_throughput.py

clean:
	rm -rf $(VENV) ./lens examples/standins/.weights bench/out
