# The two commands are `make demo` and `make test` (README.md). Each creates .venv when the pinned
# requirements change, makes sure Postgres and Redis answer (scripts/services.py), migrates, then runs.
# Every target that talks to the services sources .data/services.env, which `services` writes, so all
# of them use the same servers. Command-line tools a target needs (promtool, npm, wrk, chromium) come from
# scripts/provision.sh, which installs only what is missing (apt as root; otherwise it names the command).

# The venv's interpreter: PYTHON=... if given, else the first of these on PATH that runs and is >= 3.11
# (a pyenv shim for a version that is not active fails to run, and is skipped).
PYTHON_CANDIDATES := python3.13 python3.12 python3.11 python3
ifeq ($(origin PYTHON),undefined)
PYTHON := $(shell for p in $(PYTHON_CANDIDATES); do \
	  "$$p" -c 'import sys; sys.exit(sys.version_info < (3, 11))' >/dev/null 2>&1 && { echo "$$p"; break; }; \
	done)
endif
VENV := .venv
PROVISION := bash scripts/provision.sh
PY := $(VENV)/bin/python
STAMP := $(VENV)/.requirements-installed
WITH_SERVICES := . ./.data/services.env &&
PORT ?= 8000
FLOWER_PORT ?= 5555
ROWS ?= 50000
# Prometheus multiprocess files of the Procfile's web and worker (README "Metrics"), wiped at every start.
METRICS_DIR := .data/prometheus

# Procfile commands (gunicorn, celery) and `honcho` come from the venv.
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
export PORT FLOWER_PORT

.PHONY: venv sdk test-tools services services-stop migrate test test-cluster test-hosts demo up tenant lint bench bench-trigger bench-drain bench-fairness bench-kick bench-sweep bench-memory bench-scripts bench-bulk bench-rtt

venv: $(STAMP)

$(STAMP): requirements.txt requirements-dev.txt
	@test -x $(PY) || test -n "$(PYTHON)" || { echo "no Python >= 3.11 on PATH (tried $(PYTHON_CANDIDATES)); set PYTHON=..." >&2; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	touch $@

# The official @trigger.dev/sdk, pinned by tests/sdk/package-lock.json, for the SDK tests.
SDK_STAMP := tests/sdk/node_modules/.package-lock.json
sdk: $(SDK_STAMP)

$(SDK_STAMP): tests/sdk/package-lock.json | test-tools
	cd tests/sdk && npm ci --no-audit --no-fund --loglevel=error

services: venv
	$(PY) scripts/services.py

services-stop: venv
	$(PY) scripts/services.py --stop

migrate: services
	$(WITH_SERVICES) $(PY) manage.py migrate --no-input

# promtool for the alert-rule tests (tests/sweep/test_alert_rules.py), npm for the SDK tests, chromium for
# the real-browser test (tests/browser/; Playwright drives Debian's /usr/bin/chromium, never `playwright install`).
test-tools:
	$(PROVISION) promtool npm chromium

# `make test` ends with the cluster run (test-cluster below): 3.8 min on the 2-core development machine;
# then the hosts run (test-hosts below): about 2–3 min.
test: test-tools migrate sdk
	$(WITH_SERVICES) $(PY) -m pytest $(PYTEST_ARGS)
	$(MAKE) test-cluster
	$(MAKE) test-hosts

# The buffer on a real Redis Cluster (docs/operations.md#redis-cluster): scripts/redis_cluster.py starts 3
# masters on free loopback ports, runs these tests with BUFFER_REDIS_URL=redis+cluster://… (the Celery broker
# stays on REDIS_URL), and stops the nodes and deletes their data, pass or fail. `make test` runs it last.
# `make test-cluster CLUSTER_TESTS=tests/test_end_to_end.py` runs just the storm.
CLUSTER_TESTS ?= tests/buffer tests/drainer tests/sweep tests/test_end_to_end.py
test-cluster: test-tools migrate
	$(WITH_SERVICES) $(PY) scripts/redis_cluster.py run -- $(PY) -m pytest $(CLUSTER_TESTS) $(CLUSTER_PYTEST_ARGS)

# Several hosts on one machine (docs/operations.md#deploying-on-several-hosts): scripts/hosts.py builds network
# namespaces on a private bridge (web, drain1, drain2, beat, redis, postgres), starts a Redis and a Postgres of
# their own on their hosts, runs tests/hosts against them (each link through scripts/netproxy.py: round trips,
# cuts) and tears everything down, pass or fail. Needs root (CI is); elsewhere the tests are skipped, saying why.
# About 3 min on the 2-core development machine. `make test` runs it after test-cluster.
test-hosts: test-tools migrate sdk
	$(WITH_SERVICES) $(PY) scripts/hosts.py run -- $(PY) -m pytest tests/hosts $(HOSTS_PYTEST_ARGS)

demo: migrate
	rm -rf $(METRICS_DIR) && mkdir -p $(METRICS_DIR)
	$(WITH_SERVICES) $(PY) manage.py mollifier_demo --port $(PORT) --flower-port $(FLOWER_PORT) $(if $(filter 1,$(HOLD)),--hold)

up: migrate
	rm -rf $(METRICS_DIR) && mkdir -p $(METRICS_DIR)
	$(WITH_SERVICES) honcho start --port $(PORT)

ifneq ($(filter tenant,$(MAKECMDGOALS)),)
ifeq ($(and $(ORG),$(ENV)),)
$(error usage: make tenant ORG=acme ENV=prod)
endif
endif
tenant: migrate
	$(WITH_SERVICES) $(PY) manage.py mollifier_tenant --org "$(ORG)" --env "$(ENV)" --enrol

# Contracts and mypy settings: pyproject.toml ([tool.importlinter], [tool.mypy]; buffer/ and drainer/ strict).
lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports
	DJANGO_DEBUG=1 $(VENV)/bin/mypy  # django-stubs imports the settings, which want a key outside DEBUG
	DJANGO_DEBUG=1 $(VENV)/bin/mypy --strict --follow-imports=silent -p buffer -p drainer  # the cores, incl. --strict's global-only flags

bench: migrate
	$(WITH_SERVICES) $(PY) bench/materialise.py --rows $(ROWS)

bench-trigger: migrate
	$(PROVISION) wrk
	$(WITH_SERVICES) $(PY) -m bench.trigger

bench-drain: migrate
	$(WITH_SERVICES) $(PY) -m bench.drain --runs 100000 --envs 10

bench-fairness: migrate
	$(WITH_SERVICES) $(PY) -m bench.fairness

bench-kick: migrate
	$(WITH_SERVICES) $(PY) -m bench.kick

bench-sweep: migrate
	$(WITH_SERVICES) $(PY) -m bench.sweep

bench-memory: migrate
	$(WITH_SERVICES) $(PY) -m bench.memory

bench-scripts: venv
	$(WITH_SERVICES) $(PY) -m bench.scripts

# The trigger path and a drain round with Redis and Postgres 0, 0.5 and 2 ms away (bench/rtt.py), on the hosts
# of scripts/hosts.py as root, else through the same proxy on loopback.
bench-rtt: migrate
	$(WITH_SERVICES) $(PY) scripts/hosts.py run -- $(PY) -m bench.rtt

bench-bulk: migrate
	$(WITH_SERVICES) $(PY) -m bench.bulk
