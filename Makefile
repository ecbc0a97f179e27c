# Celery fleet toolkit. `make help` lists the targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV ?= .venv
INVENTORY ?= playbooks/inventories/sandbox/hosts.yml
LIMIT ?=
CHECK ?=
TASK ?=
ARGS ?=
TIMEOUT ?= 10
FORMAT ?= text
PYTEST_ARGS ?=
SERIAL ?= 1
BENCH ?=

BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

export ANSIBLE_CONFIG := $(CURDIR)/ansible.cfg
export ARGS

.PHONY: help
help: ## Show this help
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-15s %s\n", $$1, $$2}'

.PHONY: setup
setup: $(STAMP) ## Install system packages and the controller environment (.venv)
	@scripts/system-packages.sh

$(STAMP): requirements.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements.txt
	@touch $@

.PHONY: sandbox-up
sandbox-up: setup ## Boot one sandbox host per inventory host [INVENTORY=path]
	$(BIN)/python scripts/sandbox.py up $(INVENTORY)

.PHONY: sandbox-down
sandbox-down: ## Stop and remove the inventory's sandbox hosts [INVENTORY=path]
	@if [ -x $(BIN)/python ]; then $(BIN)/python scripts/sandbox.py down $(INVENTORY); else $(PYTHON) scripts/sandbox.py down $(INVENTORY); fi

.PHONY: sandbox-status
sandbox-status: ## List sandbox hosts, addresses and state
	@$(PYTHON) scripts/sandbox.py status

.PHONY: deploy
deploy: setup ## Deploy the fleet [INVENTORY=path] [LIMIT=hosts] [CHECK=1]
	@INVENTORY=$(INVENTORY) LIMIT=$(LIMIT) CHECK=$(CHECK) scripts/deploy.sh

.PHONY: broadcast
broadcast: setup ## Run a maintenance task on every node: TASK=name [ARGS=json] [TIMEOUT=s] [FORMAT=json]
	@$(BIN)/python scripts/broadcast.py --inventory "$(INVENTORY)" --task "$(TASK)" --args "$$ARGS" \
		--timeout "$(TIMEOUT)" --format "$(FORMAT)"

.PHONY: health
health: setup ## Check every host, unit, node, queue and beat against the inventory [INVENTORY=path] [FORMAT=json]
	@$(BIN)/python scripts/health.py --inventory "$(INVENTORY)" --format "$(FORMAT)"

.PHONY: status
status: setup ## One row per host: OK / WARN / FAIL / DOWN and why [INVENTORY=path] [FORMAT=json]
	@$(BIN)/python scripts/health.py --inventory "$(INVENTORY)" --format "$(FORMAT)" --summary

.PHONY: restart
restart: setup ## Rolling restart of the workers, SERIAL hosts at a time: drain, restart, verify [INVENTORY=path] [SERIAL=1] [FORMAT=json]
	@$(BIN)/python scripts/restart.py --inventory "$(INVENTORY)" --serial "$(SERIAL)" --format "$(FORMAT)"

.PHONY: lint
lint: setup ## Run ansible-lint (production profile) and yamllint
	$(BIN)/yamllint -s .
	$(BIN)/ansible-lint --profile production playbooks/

.PHONY: test
test: setup ## Run the whole test suite (lint, unit, sandbox fleet)
	$(MAKE) --no-print-directory lint
	$(BIN)/pytest $(PYTEST_ARGS) tests

.PHONY: bench
bench: setup ## Print benchmark figures [BENCH="sandbox deploy broadcast health restart"]
	$(BIN)/python scripts/bench.py $(BENCH)

.PHONY: clean
clean: ## Remove the controller environment (the sandbox stays; see sandbox-down)
	rm -rf $(VENV) .pytest_cache
