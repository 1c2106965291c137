# ocistrap: `make demo` installs everything and builds; `make test` runs the tests.
PYTHON ?= /usr/bin/python3
VENV ?= .venv
BIN := $(VENV)/bin
PYTEST_ARGS ?=

.PHONY: deps venv test test-here unit demo demo-here bench clean

deps:
	sh scripts/host-deps.sh

$(BIN)/ocistrap: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

venv: $(BIN)/ocistrap

# As root this re-runs itself as an unprivileged account with subuids.
test: deps
	sh scripts/as-user.sh test-here

test-here: venv
	$(BIN)/python -m pytest -ra $(PYTEST_ARGS)

# Fast tests only: no network, no namespaces.
unit: venv
	$(BIN)/python -m pytest -ra -m "not e2e and not network" $(PYTEST_ARGS)

demo: deps
	sh scripts/as-user.sh demo-here

demo-here: venv
	PATH="$(CURDIR)/$(BIN):$$PATH" sh scripts/demo.sh

# Timings against the issue's budgets, as the current user (cold runs need the network).
bench: deps venv
	for script in scripts/bench-*.py; do $(BIN)/python "$$script" || exit 1; done

clean:
	rm -rf $(VENV) build *.egg-info
