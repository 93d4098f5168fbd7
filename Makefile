# The two commands of the README: `make run` and `make test`.
# Both install whatever is missing first (Debian packages, the .venv, npm packages).

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: run test bench setup setup-run lint typecheck unit clean

run: setup-run
	$(BIN)/aoc up

test: setup lint typecheck
	$(BIN)/pytest

# Benchmarks against real processes (not part of `make test`), e.g.
# make bench BENCH="latency --rate 100"   or   make bench BENCH="soak --duration 120"
BENCH ?= throughput
bench: setup
	$(BIN)/python -m bench $(BENCH)

setup-run: .stamps/apt-run $(VENV)/.installed-run dashboard/node_modules/.installed
setup: .stamps/apt-test $(VENV)/.installed-test tests/js/node_modules/.installed \
	dashboard/node_modules/.installed

lint: setup
	$(BIN)/ruff check .

typecheck: setup
	$(BIN)/mypy

# Debian packages: only those whose command is missing (scripts/missing-packages
# decides, one command and its package at a time), so a machine that has them
# needs neither root nor the network. /usr/sbin: where Debian puts mosquitto,
# outside a normal user's PATH. npm: the dashboard's libraries (`make run` serves it);
# chromium and its driver: the dashboard's browser tests.
RUN_COMMANDS := mosquitto:mosquitto redis-server:redis-server node:nodejs npm:npm
TEST_COMMANDS := docker-compose:docker-compose mosquitto_pub:mosquitto-clients \
	chromium:chromium chromedriver:chromium-driver
APT_INSTALL = $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq

.stamps/apt-run:
	@missing="$$(PATH="$$PATH:/usr/sbin:/sbin" /bin/sh scripts/missing-packages $(RUN_COMMANDS))" || exit 1; \
	$(PYTHON) -c "import ensurepip" 2>/dev/null || missing="$$missing python3-venv"; \
	if [ -n "$$missing" ]; then $(APT_INSTALL) $$missing; fi
	@mkdir -p .stamps && touch $@

.stamps/apt-test: .stamps/apt-run
	@missing="$$(/bin/sh scripts/missing-packages $(TEST_COMMANDS))" || exit 1; \
	if [ -n "$$missing" ]; then $(APT_INSTALL) $$missing; fi
	@touch $@

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.installed-run: pyproject.toml | $(VENV)/bin/python
	$(BIN)/pip install -q -e .
	@touch $@

$(VENV)/.installed-test: pyproject.toml | $(VENV)/bin/python
	$(BIN)/pip install -q -e '.[test]'
	@touch $@ $(VENV)/.installed-run

tests/js/node_modules/.installed: tests/js/package.json tests/js/package-lock.json
	cd tests/js && npm ci --no-audit --no-fund --loglevel=error
	@touch $@

# The dashboard's browser libraries, served as they are by the HTTP API at /dashboard.
dashboard/node_modules/.installed: dashboard/package.json dashboard/package-lock.json | .stamps/apt-run
	cd dashboard && npm ci --no-audit --no-fund --loglevel=error
	@touch $@

clean:
	rm -rf .stamps $(VENV) tests/js/node_modules dashboard/node_modules data
