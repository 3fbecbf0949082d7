# InstructForge — the two commands: `make run` and `make test`.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-$(shell cksum < pyproject.toml | cut -d' ' -f1)
PYTEST_ARGS ?=
# Test processes (pytest-xdist, whole files per process): each has its own PostgreSQL database, Redis database
# and temporary folder, so they never share state. TEST_WORKERS=0 runs everything in one process.
TEST_WORKERS ?= 2

.PHONY: install run test lint typecheck check e2e bench-import bench-dedup bench-generate bench-ui bench-load clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check "torch==2.13.0"
	$(PY) -m pip install -q --disable-pip-version-check -e ".[dev,train]"
	rm -f $(VENV)/.installed-*
	touch $@

install: $(STAMP)

## run: install, migrate and start API + web UI + one worker on embedded defaults (http://127.0.0.1:8000)
run: install
	$(VENV)/bin/instructforge run

## test: install and run the whole suite (PostgreSQL, Redis, SQLite, Chromium), lint and types first
test: install lint typecheck
	$(PY) -m pytest -q -p no:cacheprovider --timeout=900 --durations=25 -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/ruff check app workers trainer instructforge tests bench migrations
	$(VENV)/bin/ruff format --check app workers trainer instructforge tests bench migrations

typecheck: install
	$(VENV)/bin/mypy app workers trainer instructforge

check: lint typecheck

## e2e: seed tasks to trained adapter through the running service (see docs/user-guide.md)
e2e: install
	$(PY) -m pytest -q -p no:cacheprovider -m e2e tests/e2e

bench-import: install
	$(PY) bench/import_records.py

bench-dedup: install
	$(PY) bench/dedup.py

bench-generate: install
	$(PY) bench/generate.py

bench-ui: install
	$(PY) bench/ui.py

bench-load: install
	$(PY) bench/load.py

clean:
	rm -rf $(VENV) build *.egg-info .mypy_cache .ruff_cache
