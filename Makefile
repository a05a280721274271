# Oasis sandbox: `make run` starts the service, `make test` proves it.
# Every target builds the environment it needs, so both work on a fresh clone.

PYTHON ?= python3
RUNTIME_PYTHON ?= /usr/bin/python3
VENV := .venv
RUNTIME := .runtime/python
BIN := $(VENV)/bin
PROTO_SRC := proto/oasis/sandbox/v1/sandbox.proto
GEN_DIR := oasis/sandbox/v1

.PHONY: install proto run demo test lint format bench clean

# Server and development tools live in .venv; the code's own interpreter
# (numpy, pandas, matplotlib) lives in .runtime/python, built from the system
# Python so that unprivileged sandbox users can read it.
install: $(VENV)/.installed $(RUNTIME)/.installed
	@command -v slirp4netns >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null \
		&& apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slirp4netns iproute2; } \
		|| echo "note: without slirp4netns (Debian package) sandboxed code gets no network"

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

$(RUNTIME)/.installed: runtime-requirements.txt
	$(RUNTIME_PYTHON) -m venv $(RUNTIME)
	$(RUNTIME)/bin/pip install --quiet -r runtime-requirements.txt
	MPLCONFIGDIR=$(CURDIR)/.runtime/mplconfig $(RUNTIME)/bin/python -c "import matplotlib.pyplot"
	touch $@

proto: $(VENV)/.installed
	$(BIN)/python scripts/genproto.py

run: install
	SANDBOX_PYTHON_BIN=$(CURDIR)/$(RUNTIME)/bin/python exec $(BIN)/oasis-sandbox serve

# An agent through every documented pattern; starts a sandbox in-process when
# none answers on 127.0.0.1:50051. Scripted LLM unless OPENAI_API_KEY is set.
demo: install
	SANDBOX_PYTHON_BIN=$(CURDIR)/$(RUNTIME)/bin/python exec $(BIN)/oasis-sandbox demo

# Everything under the default warm launcher, then the security and protocol
# suites again with every execution started cold.
test: install
	SANDBOX_PYTHON_BIN=$(CURDIR)/$(RUNTIME)/bin/python $(BIN)/pytest
	SANDBOX_PYTHON_BIN=$(CURDIR)/$(RUNTIME)/bin/python SANDBOX_LAUNCHER=cold \
		$(BIN)/pytest tests/security tests/server/test_protocol.py

lint: $(VENV)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy oasis sandbox_server

format: $(VENV)/.installed
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) .runtime .pytest_cache .mypy_cache .ruff_cache

# Every launcher mode side by side: a table, bench/results/latest.json and latest.png.
# BENCH_ARGS passes options, e.g. `make bench BENCH_ARGS="--quick"` (see --help).
bench: install
	SANDBOX_PYTHON_BIN=$(CURDIR)/$(RUNTIME)/bin/python $(BIN)/python bench/run.py $(BENCH_ARGS)
