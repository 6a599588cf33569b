# The two commands: `make run` (quick start) and `make test` (everything CI checks).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: run test lint typecheck pytest sysdeps bench clean e2e

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

# What the kernel tests need from Debian (only installed when missing, as root).
# The UI's browser tests drive Debian's chromium (Playwright, never its own browser download).
# The alert rules' tests and the real-Prometheus test run Debian's promtool and prometheus.
sysdeps:
	@if [ "$$(id -u)" = 0 ] && ! command -v nft >/dev/null; then \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nftables iproute2; \
	fi
	@if [ "$$(id -u)" = 0 ] && ! command -v curl >/dev/null; then \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq curl; \
	fi
	@if [ "$$(id -u)" = 0 ] && [ ! -x /usr/bin/chromium ]; then \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium fonts-dejavu-core; \
	fi
	@if [ "$$(id -u)" = 0 ] && ! command -v promtool >/dev/null; then \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus; \
	fi
	@if [ "$$(id -u)" = 0 ] && ! command -v docker-compose >/dev/null; then \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker-compose; \
	fi

run: $(STAMP)
	$(PY) manage.py migrate --no-input -v0
	$(PY) manage.py signing_key generate --if-missing
	$(PY) manage.py seed_demo --if-empty
	$(PY) manage.py ensure_admin
	$(PY) manage.py collectstatic --no-input -v0
	@echo
	@echo "portslice is starting on http://$(HOST):$(PORT)/ (the overview; admin at /admin/)"
	@echo "web, a planner worker, beat and the demo agents with traffic (Procfile, honcho);"
	@echo "Ctrl-C stops everything"
	@echo "log in as 'admin' with the password in var/admin-password (cat var/admin-password)"
	@echo
	@# demo.foreground: Ctrl-C reaches honcho (which stops everything), not make; status 0.
	@# DEMO_LOOPBACK_EGRESS: without root the demo sends from 127.0.0.0/8 (never in production).
	HOST=$(HOST) WEB_PORT=$(PORT) DEMO_LOOPBACK_EGRESS=true \
	  $(PY) -m demo.foreground $(VENV)/bin/honcho start -f Procfile

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: $(STAMP)
	$(VENV)/bin/mypy

# PostgreSQL is used when DATABASE_URL says so or when 127.0.0.1:5432 answers;
# otherwise the tests run on SQLite and the PostgreSQL-only ones skip (or fail under CI=true).
pytest: $(STAMP) sysdeps
	@if [ -z "$$DATABASE_URL" ] && (exec 3<>/dev/tcp/127.0.0.1/5432) 2>/dev/null; then \
	  export DATABASE_URL=postgres://postgres@127.0.0.1:5432/test; fi; \
	echo "tests on $${DATABASE_URL:-sqlite}"; \
	$(VENV)/bin/pytest $(PYTEST_ARGS)

test: lint typecheck pytest

# The data plane end to end (root, PostgreSQL, Redis): tests/e2e/test_dataplane.py;
# a real Prometheus raising alerts.yml's alerts on it: tests/e2e/test_prometheus.py.
e2e: $(STAMP) sysdeps
	@if [ -z "$$DATABASE_URL" ] && (exec 3<>/dev/tcp/127.0.0.1/5432) 2>/dev/null; then \
	  export DATABASE_URL=postgres://postgres@127.0.0.1:5432/test; fi; \
	$(VENV)/bin/pytest tests/e2e/test_dataplane.py tests/e2e/test_prometheus.py -m e2e -v $(PYTEST_ARGS)

bench: $(STAMP)
	for b in bench/bench_*.py; do $(PY) -m bench.$$(basename $$b .py) || exit 1; done

clean:
	rm -rf $(VENV) var .mypy_cache .ruff_cache .pytest_cache .hypothesis
