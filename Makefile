# doorscan: `make demo` runs the whole path, `make test` runs every check CI runs.
# Both create .venv/ in the checkout and install what is missing.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp

.PHONY: all test lint typecheck unit demo bench system-deps venv clean

all: test

# System packages: installed with apt-get when we are root, otherwise we stop and say how.
# chromium is Debian's, for the dashboard's browser tests (Playwright drives it; no download);
# shellcheck checks deploy/install-unit.sh.
system-deps:
	@missing=""; \
	ldconfig -p 2>/dev/null | grep -q 'libzbar\.so\.0' || missing="$$missing libzbar0"; \
	{ command -v mosquitto >/dev/null || test -x /usr/sbin/mosquitto; } || missing="$$missing mosquitto"; \
	command -v mosquitto_pub >/dev/null || missing="$$missing mosquitto-clients"; \
	test -x /usr/bin/chromium || missing="$$missing chromium"; \
	command -v shellcheck >/dev/null || missing="$$missing shellcheck"; \
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

typecheck: $(STAMP)
	$(VENV)/bin/mypy

unit: system-deps $(STAMP)
	$(VENV)/bin/pytest -q

test: system-deps $(STAMP) lint typecheck unit

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

# Figures for docs/benchmarks.md and .json (about 10 minutes; not part of `make test`).
bench: $(STAMP)
	$(PY) -m benchmarks

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
