# The two commands of the README: `make demo` and `make test`. Both set up .venv first
# (pinned versions from constraints.txt; torch comes from this machine's wheel cache).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.itemlens-installed

.PHONY: demo test bench setup clean

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python examples/demo.py --store ./lens

test: $(STAMP)
	$(BIN)/python -m pytest --no-skips --durations=15

bench: $(STAMP)
	$(BIN)/python bench/ingest_throughput.py

clean:
	rm -rf $(VENV) ./lens examples/standins/.weights bench/out
