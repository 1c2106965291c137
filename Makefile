# ocistrap: `make demo` installs everything and builds; `make test` runs the tests.
PYTHON ?= /usr/bin/python3
VENV ?= .venv
BIN := $(VENV)/bin
PYTEST_ARGS ?=

.PHONY: deps venv test test-root test-here test-nosubid-here unit unit-here demo demo-here bench bench-here clean

deps:
	sh scripts/host-deps.sh

$(BIN)/ocistrap: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

venv: $(BIN)/ocistrap

# As root this re-runs itself as an unprivileged account with subuids, then runs the
# single-uid end-to-end test as a second account that has none, then root's own modes as root.
test: deps
	sh scripts/as-user.sh test-here
	OCISTRAP_TEST_USER=ocistrap-nosubid OCISTRAP_TEST_SUBIDS=none sh scripts/as-user.sh test-nosubid-here
	@if [ "$$(id -u)" -eq 0 ]; then $(MAKE) test-root; fi

# The tests of root's own modes (marker root), as root: nothing else may run as root.
test-root: venv
	$(BIN)/python -m pytest -ra -m root $(PYTEST_ARGS)

# The account's suite runs in PYTEST_JOBS processes (pytest-xdist), each taking a whole test file
# at a time, so a module's fixtures are made once; PYTEST_JOBS=0 runs it in one process.
PYTEST_JOBS ?= 2
test-here: venv
	$(BIN)/python -m pytest -ra -n $(PYTEST_JOBS) --dist loadfile $(PYTEST_ARGS)

test-nosubid-here: venv
	$(BIN)/python -m pytest -ra -m nosubid tests/test_e2e_nosubid.py

# Fast tests only: no network and no build against deb.debian.org; the user namespace tests
# (marker userns) are in, so as root this re-runs itself as the unprivileged account.
unit:
	sh scripts/as-user.sh unit-here

unit-here: venv
	$(BIN)/python -m pytest -ra -m "not e2e and not network" $(PYTEST_ARGS)

demo: deps
	sh scripts/as-user.sh demo-here

demo-here: venv
	PATH="$(CURDIR)/$(BIN):$$PATH" sh scripts/demo.sh

# Timings against the issues' budgets as an unprivileged account (needs the network: cold runs,
# mmdebstrap), ending in BENCHMARKS.md. BENCH_ARGS go to scripts/bench-build.py,
# e.g. make bench BENCH_ARGS="--runs 5 --foreign".
BENCH_ARGS ?=
# As root, scripts/bench-root.py wraps it: it runs root mode's builds as root, at their place in
# the account's rounds (root mode needs root; everything else runs as the account).
ROOT_RUNNER = $(if $(filter 0,$(shell id -u)),$(BIN)/python scripts/bench-root.py --user $${OCISTRAP_TEST_USER:-ocistrap-test} --)
bench: deps venv
	BENCH_REVISION="$$(git rev-parse --short HEAD 2>/dev/null || echo unknown)" \
	    $(ROOT_RUNNER) sh scripts/as-user.sh bench-here
	@if [ "$$(id -u)" -eq 0 ]; then \
	    cp "$$(getent passwd $${OCISTRAP_TEST_USER:-ocistrap-test} | cut -d: -f6)/ocistrap-src/BENCHMARKS.md" . && \
	    echo "BENCHMARKS.md copied back from the unprivileged account's tree"; fi

bench-here: venv
	$(BIN)/python scripts/bench-lock.py
	$(BIN)/python scripts/bench-build.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info
