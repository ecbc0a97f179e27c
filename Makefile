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
ANSIBLE_ARGS ?=
SERIAL ?= 1
BENCH ?=
HOSTS ?=
FLEET ?=
TEST_LANES ?= 1

BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
LIMIT_ARG = $(if $(LIMIT),--limit "$(LIMIT)")
SHELL_SCRIPTS := $(wildcard scripts/*.sh) .ci/run

export ANSIBLE_CONFIG := $(CURDIR)/ansible.cfg
export ARGS ANSIBLE_ARGS

.PHONY: help
help: ## Show this help
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-15s %s\n", $$1, $$2}'

.PHONY: setup
setup: $(STAMP) ## Install the controller environment (.venv; root only to install missing system packages)
	@scripts/system-packages.sh controller

$(STAMP): requirements.txt pyproject.toml
	@scripts/system-packages.sh controller
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements.txt
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps -e .
	@touch $@

.PHONY: sandbox-up
sandbox-up: setup ## Boot one sandbox host per inventory host [INVENTORY=path] (root)
	@scripts/system-packages.sh sandbox
	$(BIN)/fleetctl sandbox up $(INVENTORY)

.PHONY: sandbox-down
sandbox-down: ## Stop and remove the inventory's sandbox hosts [INVENTORY=path]
	@if [ -x $(BIN)/fleetctl ]; then $(BIN)/fleetctl sandbox down $(INVENTORY); else PYTHONPATH=scripts $(PYTHON) -m fleetctl sandbox down $(INVENTORY); fi

.PHONY: sandbox-status
sandbox-status: ## List sandbox hosts, addresses and state
	@if [ -x $(BIN)/fleetctl ]; then $(BIN)/fleetctl sandbox status; else PYTHONPATH=scripts $(PYTHON) -m fleetctl sandbox status; fi

.PHONY: deploy
deploy: setup ## Deploy the fleet [INVENTORY=path] [LIMIT=hosts] [CHECK=1] [ANSIBLE_ARGS="--tags ... -e ..."]
	@INVENTORY=$(INVENTORY) LIMIT=$(LIMIT) CHECK=$(CHECK) scripts/deploy.sh

.PHONY: broadcast
broadcast: setup ## Run a maintenance task on every node: TASK=name [ARGS=json] [LIMIT=hosts] [TIMEOUT=s] [FORMAT=json]
	@$(BIN)/fleetctl broadcast --inventory "$(INVENTORY)" $(LIMIT_ARG) --task "$(TASK)" --args "$$ARGS" \
		--timeout "$(TIMEOUT)" --format "$(FORMAT)"

.PHONY: health
health: setup ## Check every host, unit, node, queue and beat against the inventory [INVENTORY=path] [LIMIT=hosts] [FORMAT=json]
	@$(BIN)/fleetctl health --inventory "$(INVENTORY)" $(LIMIT_ARG) --format "$(FORMAT)"

.PHONY: status
status: setup ## One row per host: OK / WARN / FAIL / DOWN and why [INVENTORY=path] [LIMIT=hosts] [FORMAT=json]
	@$(BIN)/fleetctl status --inventory "$(INVENTORY)" $(LIMIT_ARG) --format "$(FORMAT)"

.PHONY: restart
restart: setup ## Rolling restart of the workers, SERIAL hosts at a time: drain, restart, verify [INVENTORY=path] [LIMIT=hosts] [SERIAL=1] [FORMAT=json|json-lines]
	@$(BIN)/fleetctl restart --inventory "$(INVENTORY)" $(LIMIT_ARG) --serial "$(SERIAL)" --format "$(FORMAT)"

.PHONY: broker-restart
broker-restart: setup ## Rolling restart of the broker nodes, one at a time: quorum, drain, restart, revive, rejoin [INVENTORY=path] [FORMAT=json]
	@$(BIN)/fleetctl broker restart --inventory "$(INVENTORY)" --format "$(FORMAT)"

.PHONY: lint
lint: setup ## Run ruff, shellcheck, yamllint, ansible-lint (production profile) and promtool on the alert rules
	@scripts/system-packages.sh lint
	$(BIN)/ruff check .
	shellcheck $(SHELL_SCRIPTS)
	$(BIN)/yamllint -s .
	$(BIN)/ansible-lint --profile production playbooks/
	scripts/check-alert-rules.sh

.PHONY: test-unit
test-unit: $(STAMP) ## Run the fast tier: no root, no sandbox, no broker (well under a minute)
	$(BIN)/pytest -m unit $(PYTEST_ARGS) tests/unit

.PHONY: test-fast
test-fast: $(STAMP) ## Run the fast tiers: unit and preflight (no root, no sandbox, no broker)
	$(BIN)/pytest -m "unit or preflight" $(PYTEST_ARGS) tests/unit tests/preflight

.PHONY: test-fleet
test-fleet: setup ## Run one fleet's tests alone: FLEET=name (tests/support/fleet.py lists the fleets) (root)
	@scripts/system-packages.sh test
	$(BIN)/pytest --fleet "$(FLEET)" $(PYTEST_ARGS) tests

.PHONY: test
test: setup ## Run the whole test suite: lint, then every tier [TEST_LANES=2: two lanes of fleets side by side]
	@scripts/system-packages.sh test
	$(MAKE) --no-print-directory lint
	$(BIN)/pytest $(if $(filter-out 0 1,$(TEST_LANES)),-n $(TEST_LANES)) $(PYTEST_ARGS) tests

.PHONY: bench
bench: setup ## Print benchmark figures [BENCH="sandbox deploy broadcast health restart rolling results events release broker scale"] [HOSTS=24]
	@scripts/system-packages.sh sandbox
	$(BIN)/fleetctl bench $(BENCH) $(if $(HOSTS),--hosts $(HOSTS))

.PHONY: clean
clean: ## Remove the controller environment (the sandbox stays; see sandbox-down)
	rm -rf $(VENV) .pytest_cache

.PHONY: release
release: setup ## Build the app's release and roll it out host by host, canary first [INVENTORY=path] [VERSION=id] [CHECK=1] [FORMAT=json]
	@$(BIN)/fleetctl release --inventory "$(INVENTORY)" $(LIMIT_ARG) $(if $(VERSION),--version "$(VERSION)") \
		$(if $(CHECK),--dry-run) --format "$(FORMAT)"

.PHONY: rollback
rollback: setup ## Roll the previous (or TO=id) release out again, host by host [INVENTORY=path] [TO=id] [CHECK=1] [FORMAT=json]
	@$(BIN)/fleetctl rollback --inventory "$(INVENTORY)" $(LIMIT_ARG) $(if $(TO),--to "$(TO)") \
		$(if $(CHECK),--dry-run) --format "$(FORMAT)"
