# The two commands of the README. Both set everything up first (idempotent).
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: setup serve test test-fast clean

setup:
	@bash tools/setup.sh

serve: setup
	$(PY) -m tools.serve

test: setup
	$(PY) -m pytest -q -ra tests

test-fast: setup  ## skip tests/e2e (other suites still start tritonserver: client, reliability, perf, deploy)
	$(PY) -m pytest -q -ra tests --ignore=tests/e2e

clean:
	rm -rf $(VENV) models .pytest_cache
