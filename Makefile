# coopr-pipeline: `make demo` runs the pipeline on a local multi-DC stack, `make test` passes
# the tests. Both run `make setup` first, which installs everything and is quick when done.

PYTHON  ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
KAFKA   := .cache/kafka
# toxiproxy cuts and slows the links of failure drills; Go builds it from the module proxy.
TOXIPROXY_VERSION := v2.5.0
TOXIPROXY := .cache/toxiproxy/server
CLI     := $(BIN)/coopr-pipeline
PYTEST_ARGS ?=

.PHONY: setup demo test lint format bench stack-down clean

setup: $(VENV)/.installed $(KAFKA)/.fetched $(TOXIPROXY) system-deps

$(VENV)/.installed: pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11+ is needed, found " + sys.version.split()[0])'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

$(KAFKA)/.fetched: deploy/kafka/pom.xml
	@deploy/scripts/check-java.sh
	rm -rf $(KAFKA)/lib
	mvn -q -B -f deploy/kafka/pom.xml dependency:copy-dependencies -DoutputDirectory=$(CURDIR)/$(KAFKA)/lib
	touch $@

$(TOXIPROXY): Makefile
	@command -v go >/dev/null 2>&1 || { echo "Go is needed to build toxiproxy (Debian: apt-get install golang)" >&2; exit 1; }
	GOBIN=$(CURDIR)/.cache/toxiproxy go install github.com/Shopify/toxiproxy/v2/cmd/server@$(TOXIPROXY_VERSION)
	touch $@

.PHONY: system-deps
system-deps:
	@deploy/scripts/install-system-deps.sh

# SECURE=1: the same on the secured stack (SASL_SSL with ACLs, PostgreSQL over TLS; see
# docs/security.md), in a run dir of its own.
SECURE_RUN := COOPR_RUN_DIR=$(CURDIR)/.stack-secure
DEMO_ENV := $(if $(SECURE),$(SECURE_RUN))

demo: setup
	$(DEMO_ENV) $(CLI) stack up $(if $(SECURE),--secure)
	$(DEMO_ENV) $(CLI) demo --duration 30

test: setup
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

format: setup
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

# One results file in .bench/, its path the last line. QUICK=1: smaller counts, under 5 minutes
# with a stack to start.
bench: setup
	$(CLI) bench all $(if $(QUICK),--quick)

stack-down:
	$(CLI) stack down
	$(SECURE_RUN) $(CLI) stack down

clean: stack-down
	rm -rf $(VENV) .cache .stack .stack-secure
