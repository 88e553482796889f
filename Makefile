# doorscan: `make demo` runs the whole path, `make test` runs every check CI runs.
# Both create .venv/ in the checkout and install what is missing.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp

.PHONY: all test lint typecheck unit demo bench pi-check system-deps postgres venv clean

all: test

# System packages: installed with apt-get when we are root, otherwise we stop and say how.
# chromium is Debian's, for the dashboard's browser tests (Playwright drives it; no download);
# shellcheck checks deploy/install-unit.sh; fonts-dejavu-core prints visitor cards (every
# Vietnamese letter with its marks); postgresql: the server the hub suite runs on, and the
# binaries (initdb, pg_basebackup) of the failover test's own primary and standby.
system-deps:
	@missing=""; \
	ldconfig -p 2>/dev/null | grep -q 'libzbar\.so\.0' || missing="$$missing libzbar0"; \
	{ command -v mosquitto >/dev/null || test -x /usr/sbin/mosquitto; } || missing="$$missing mosquitto"; \
	command -v mosquitto_pub >/dev/null || missing="$$missing mosquitto-clients"; \
	test -x /usr/bin/chromium || missing="$$missing chromium"; \
	command -v shellcheck >/dev/null || missing="$$missing shellcheck"; \
	test -f /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf || missing="$$missing fonts-dejavu-core"; \
	{ ls /usr/lib/postgresql/*/bin/pg_basebackup >/dev/null 2>&1 || command -v initdb >/dev/null; } \
	  || missing="$$missing postgresql"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing:$$missing"; \
	    DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  else \
	    echo "Missing system packages. Run this, then try again:"; \
	    echo "  sudo apt-get install -y$$missing"; \
	    exit 1; \
	  fi; \
	fi

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports

typecheck: $(STAMP)
	$(VENV)/bin/mypy

# The hub suite runs on SQLite and on PostgreSQL (tests/hubdb.py): a server must answer at
# $$DOORSCAN_TEST_PG (default postgresql://postgres@127.0.0.1:5432/test). Start a local
# cluster that is installed but down; never skip the PostgreSQL half.
PG_URL ?= $(or $(DOORSCAN_TEST_PG),postgresql://postgres@127.0.0.1:5432/test)
postgres:
	@if ! pg_isready -q -h 127.0.0.1 2>/dev/null && command -v pg_ctlcluster >/dev/null && [ "$$(id -u)" = 0 ]; then \
	  cluster="$$(ls /etc/postgresql | head -n1)"; \
	  echo "starting PostgreSQL $$cluster"; \
	  pg_ctlcluster --skip-systemctl-redirect "$$cluster" main start || true; \
	  for i in 1 2 3 4 5 6 7 8 9 10; do pg_isready -q -h 127.0.0.1 && break; sleep 1; done; \
	fi
	@psql "$(PG_URL)" -qAtc 'select 1' >/dev/null 2>&1 || { \
	  echo "No PostgreSQL at $(PG_URL): the hub tests run on it too."; \
	  echo "Start one (apt-get install postgresql) or set DOORSCAN_TEST_PG to a database URL."; \
	  exit 1; }

unit: system-deps postgres $(STAMP)
	$(VENV)/bin/pytest -q

test: system-deps postgres $(STAMP) lint typecheck unit

# The demo prefers Mosquitto; without it (and without root to install it) it runs an
# embedded amqtt broker instead. libzbar0 it needs either way (one unit decodes with zbar).
demo: $(STAMP)
	@if [ "$$(id -u)" = 0 ]; then $(MAKE) --no-print-directory system-deps; \
	elif ! ldconfig -p 2>/dev/null | grep -q 'libzbar\.so\.0'; then \
	  echo "Missing system package. Run this, then try again:"; \
	  echo "  sudo apt-get install -y libzbar0 mosquitto"; exit 1; \
	elif ! { command -v mosquitto >/dev/null || test -x /usr/sbin/mosquitto; }; then \
	  echo "mosquitto is not installed: the demo uses an embedded amqtt broker"; \
	  $(PY) -m pip install -q 'amqtt>=0.11'; \
	fi
	$(PY) -m doorscan.demo

# The unit on aarch64 Debian Bookworm (Raspberry Pi OS's base) under qemu-user-static:
# install-unit.sh for real, the self-test, scans acked by a hub, an update and a rollback
# (picheck/). Needs root (debootstrap, chroot, mounts); the root is cached outside the
# checkout (/var/cache/doorscan-pi), built the first time it is needed.
pi-check: system-deps $(STAMP)
	bash picheck/root.sh ensure
	$(VENV)/bin/pytest -q picheck

# Figures for docs/benchmarks.md and .json (about 10 minutes; not part of `make test`).
bench: $(STAMP)
	$(PY) -m benchmarks

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
