# Renkei Hub front door: `make run` and `make test` set everything up from bare Python.
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed

.PHONY: run test test-faults kafka lint bench clean

$(STAMP): pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[dev]'
	touch $(STAMP)

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

bench: $(STAMP)
	$(VENV)/bin/python -m tests.benchmarks.latency --events $${EVENTS:-100}
