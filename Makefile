# Renkei Hub front door: `make run` and `make test` set everything up from bare Python.
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed
# Every dependency (runtime and dev) pinned with hashes: what was tested is what runs.
LOCK := requirements.lock

.PHONY: run test test-faults kafka lint bench bench-latency clean lock

$(STAMP): pyproject.toml $(LOCK)
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --require-hashes -r $(LOCK)
	$(VENV)/bin/pip install -q --no-deps --no-build-isolation -e .
	touch $(STAMP)

# After changing dependencies in pyproject.toml: re-resolve and re-pin (needs PyPI), then the
# next make installs the new set. `make lock UPGRADE=--upgrade` moves every pin to the newest.
lock:
	test -x $(VENV)/bin/uv || $(MAKE) $(STAMP)
	$(VENV)/bin/uv pip compile -q --generate-hashes --extra dev $(UPGRADE) \
		--python-version 3.11 --python-platform linux pyproject.toml -o $(LOCK)

run: $(STAMP)
	$(VENV)/bin/renkei up

test: $(STAMP)
	$(VENV)/bin/python -m tests.legs

test-faults: $(STAMP)
	$(VENV)/bin/python -m pytest -m faults tests/faults -v -s -p no:cacheprovider

kafka: $(STAMP)
	$(VENV)/bin/python -m deploy.kafka up --nodes $${NODES:-1}

lint: $(STAMP)
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) var .pytest_cache

# The throughput benchmark (issue 13): a table and var/bench/latest.json, ~8 min on 2 cores.
# `make bench DB=postgresql`, `make bench QUICK=1` (~3 min), `make bench PROFILE=1`;
# DRAIN=20000 sets the backlog size. wrk (the load generator) comes from Debian's packages.
DB ?= sqlite
bench: $(STAMP)
	command -v wrk >/dev/null || apt-get install -y wrk
	$(VENV)/bin/python -m tests.benchmarks.throughput --database $(DB) \
		$(if $(QUICK),--quick) $(if $(PROFILE),--profile)

# One event at a time, POST -> the care manager's list (the earlier `make bench`).
bench-latency: $(STAMP)
	$(VENV)/bin/python -m tests.benchmarks.latency --events $${EVENTS:-100}
