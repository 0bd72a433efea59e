# durable-chat: `make run` runs the system, `make test` passes the tests. Both set up what they need.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The pinned, hashed dependencies (scripts/lock.sh writes requirements/ from pyproject.toml; the Dockerfile installs
# requirements/runtime.txt, scripts/install-*.sh requirements/tools.txt).
LOCK := requirements/dev.txt

.PHONY: run test test-fast chaos bench e2e-kind lint deps lock clean

$(STAMP): pyproject.toml $(LOCK)
	$(PYTHON) scripts/lock_digest.py --check requirements/runtime.txt $(LOCK) requirements/tools.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check --require-hashes -r $(LOCK)
	$(BIN)/pip install -q --disable-pip-version-check --no-deps -e .
	touch $(STAMP)

lock:
	bash scripts/lock.sh

deps: $(STAMP)
	bash scripts/ensure-rabbitmq.sh

run: deps
	bash scripts/run-local.sh

test: deps
	@for s in scripts/install-deploy-tools.sh scripts/install-browser-tools.sh scripts/rabbitmq4-root.sh; do \
	  if [ -f $$s ]; then bash $$s || exit 1; fi; done
	$(BIN)/python -m pytest -m "not slow and not kind" -q

test-fast: deps
	$(BIN)/python -m pytest tests/unit tests/integration -q

chaos: deps
	$(BIN)/python -m pytest tests/e2e -m "slow or not slow" -q

bench: deps
	@if [ -f bench/run.sh ]; then bash bench/run.sh; else echo "bench/ not present"; exit 1; fi

e2e-kind: deps
	bash tests/e2e/kind/run.sh

lint: $(STAMP)
	$(BIN)/ruff check services tests
	$(BIN)/mypy

clean:
	rm -rf $(VENV) .tools .run data test-artifacts
