# Two commands on a fresh machine: `make demo` and `make test`. Each sets up .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test test-fast lint soak clean postgresql

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	# torch==2.13.0 is the CPU build this machine keeps on disk; asking for plain torch would
	# download a CUDA build of several GB.
	$(BIN)/pip install --quiet torch==2.13.0 numpy
	$(BIN)/pip install --quiet -e '.[torch,test,lint,postgres,modal]'
	touch $@

demo: $(VENV)/.installed
	$(BIN)/python examples/demo.py

test: lint postgresql
	$(BIN)/python -m pytest

# ruff (lint and format) and mypy, on the working tree; .pre-commit-config.yaml runs the same
# before each commit (`.venv/bin/pre-commit install`).
lint: $(VENV)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# For the edit-test loop: everything but the tests marked slow, postgres or vllm (pyproject.toml),
# under a minute on two cores and no PostgreSQL server. `make test` still runs them all.
test-fast: $(VENV)/.installed
	$(BIN)/python -m pytest -m "not slow and not postgres and not vllm"

# The adversarial suite for longer (docs/reliability.md): twenty times the generated cases and a
# load test ten times longer, about 10 minutes. Mounting a read-only and a full file system needs root.
soak: $(VENV)/.installed postgresql
	CACHEKEEPER_SOAK=1 $(BIN)/python -m pytest tests/test_bad_input.py tests/test_hostile_state.py \
		tests/test_broken_disks.py tests/test_load.py

# The tests start a throwaway PostgreSQL server of their own (tests/postgres.py) and need only its
# binaries: initdb, pg_ctl, postgres. Where there are none, Debian's package brings them.
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)
postgresql:
	@if command -v initdb >/dev/null 2>&1 || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then exit 0; fi; \
	if ! command -v apt-get >/dev/null 2>&1; then \
		echo "the tests need a PostgreSQL server (initdb, pg_ctl, postgres): install it, then run make test again" >&2; exit 1; \
	fi; \
	echo "installing Debian's postgresql package for the tests"; \
	$(SUDO) apt-get update -qq && \
	$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql >/dev/null

clean:
	rm -rf $(VENV) .demo .pytest_cache
