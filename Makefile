# Every target builds what it needs: a fresh machine needs only python3 and make.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export PYTHONDONTWRITEBYTECODE := 1

.PHONY: demo test lint typecheck unit bench soak clean local-serve local-request promtool wrk

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[test,lint,sidecar]'
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(PY) -m webhook demo

test: $(STAMP) promtool
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy
	$(PY) -m pytest

unit: $(STAMP)
	$(PY) -m pytest -x -q

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy

bench: $(STAMP) wrk
	$(PY) -m bench

# The reliability suite with its long counts (a million reviews, 100,000
# fuzzed inputs); `make test` runs the same tests with short ones.
soak: $(STAMP)
	WI_SOAK=1 $(PY) -m pytest tests/reliability -q -p no:cacheprovider --timeout=3600

# Debian's wrk makes the webhook's load in `make bench` (without it the bench
# falls back to its own aiohttp client, which runs out of CPU before the server).
wrk:
	@command -v wrk >/dev/null 2>&1 || { \
		echo "installing Debian's wrk for make bench"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null; }

# promtool (from Debian's prometheus package) checks and unit-tests the alerts.
promtool:
	@{ command -v promtool && command -v prometheus; } >/dev/null 2>&1 || { \
		echo "installing Debian's prometheus package for promtool"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus >/dev/null; }

local-serve: $(STAMP)
	$(PY) -m webhook serve --identities deploy/examples/identities.yaml \
		--namespaces deploy/examples/namespaces.yaml --state-dir .state \
		--listen 127.0.0.1:8443 --metrics-listen 127.0.0.1:9090

local-request: $(STAMP)
	curl -sS --cacert .state/tls.crt -H 'Content-Type: application/json' \
		--data @deploy/examples/admission-review.json https://127.0.0.1:8443/mutate

clean:
	rm -rf $(VENV) .state .pytest_cache .mypy_cache .ruff_cache
