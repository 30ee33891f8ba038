# The two commands of the README: `make demo` and `make test`. Both set up .venv first
# (pinned versions from constraints.txt; torch comes from this machine's wheel cache).
# `make test-fast` is the inner loop: the tests that need no Ray; `make lint` is ruff.
# `make test` runs two pytest processes side by side: the integration tests in one process with
# one local Ray (as CI has always run them), and beside it the tests that need no Ray, whose
# report follows. The integration run leaves the CPUs idle while it waits on Ray and on its
# subprocesses; the others run at the lowest priority (nice 19), so that they take that idle time
# and not the integration run's (docs/performance.md). TEST_WORKERS=2 runs the
# integration tests on two pytest-xdist workers, each with a Ray of its own: CI once lost a worker
# in that mode to a crash no local run has reproduced.
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
	@log=$$(mktemp); \
	trap 'kill $$rest 2>/dev/null; rm -f $$log; exit 130' INT TERM; \
	nice -n 19 $(BIN)/python -m pytest -m "not integration" -p no:cacheprovider --no-skips --durations=5 >$$log 2>&1 & rest=$$!; \
	$(BIN)/python -m pytest -m integration $(XDIST) --no-skips --durations=15; integration=$$?; \
	wait $$rest; rest=$$?; \
	echo; echo "== the tests that need no Ray (run beside the integration tests above):"; \
	cat $$log; rm -f $$log; \
	exit $$(( integration != 0 || rest != 0 ))

test-fast: $(STAMP)
	$(BIN)/python -m pytest -n 2 --dist loadfile -m "not integration" --durations=10

lint: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

bench: $(STAMP)
	$(BIN)/python bench/ingest_throughput.py

clean:
	rm -rf $(VENV) ./lens examples/standins/.weights bench/out
