# django-tether: `make run` starts the sandbox (`make run TASKS=django`: on Django's Tasks), `make test` runs the suite (`make test-sqlite`: its
# database-agnostic part on SQLite), `make bench` measures,
# `make lint` checks style and types, `make docs` serves the documentation site, `make docs-check`
# builds it with warnings as errors, `make chaos` soaks it under faults, `make quickstart-check`
# follows docs/getting-started.md literally in a fresh project.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
PYTEST_ARGS ?=
CHAOS_ARGS ?=

.PHONY: run test test-sqlite bench bench-smoke chaos chaos-smoke lint docs docs-check \
	quickstart-check install install-test install-docs clean screenshots

$(VENV)/.installed-sandbox: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e '.[sandbox]'
	touch $@

$(VENV)/.installed-test: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e '.[test]'
	touch $@ $(VENV)/.installed-sandbox

$(VENV)/.installed-docs: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e '.[docs]'
	touch $@

install: $(VENV)/.installed-sandbox
install-test: $(VENV)/.installed-test
install-docs: $(VENV)/.installed-docs

# `make run TASKS=django`: the sandbox processes with Django's Tasks on its database
# (django-tasks-db's db_worker) instead of Celery (docs/webhooks/django-tasks.md).
TASKS ?= celery

run: $(VENV)/.installed-sandbox
	VENV=$(VENV) SANDBOX_ASGI=$(ASGI) SANDBOX_TASK_BACKEND=$(TASKS) ./sandbox_project/run.sh

test: $(VENV)/.installed-test
	./tests/ensure_services.sh
	$(VENV)/bin/ruff check .
	$(VENV)/bin/pytest $(PYTEST_ARGS)

# The suite's database-agnostic part on SQLite, the sandbox's default database
# (tests/settings_sqlite.py: a file, with the sandbox's options for concurrent writers). Not run
# here: the tests marked postgres (they need PostgreSQL; the end of the run counts them by
# reason) and those marked slow, worker or multiprocess (they start processes of their own on
# tests.worker_settings, PostgreSQL, or on the sandbox's own SQLite file; `make test` runs them).
SQLITE_MARKERS ?= not slow and not worker and not multiprocess

test-sqlite: $(VENV)/.installed-test
	./tests/ensure_services.sh
	$(VENV)/bin/pytest --ds=tests.settings_sqlite --create-db -m "$(SQLITE_MARKERS)" $(PYTEST_ARGS)

# Both benchmarks always run; the target fails if either did (see bench/README.md). wrk, the
# ingest benchmark's load generator, is installed first when missing (bench/ensure_wrk.sh).
bench: $(VENV)/.installed-test
	./tests/ensure_services.sh
	status=0; ./bench/ensure_wrk.sh && $(PY) bench/ingest.py || status=$$?; \
	$(PY) bench/outbound.py || status=$$?; exit $$status

bench-smoke: $(VENV)/.installed-test
	./tests/ensure_services.sh
	status=0; ./bench/ensure_wrk.sh && $(PY) bench/ingest.py --smoke || status=$$?; \
	$(PY) bench/outbound.py --smoke || status=$$?; \
	$(PY) bench/throttle.py --smoke || status=$$?; exit $$status

# The getting-started page, followed as written (tests/quickstart/check.py): a fresh virtualenv
# with django-tether pip-installed from this checkout, `django-admin startproject`, the page's
# blocks in order, on PostgreSQL and Redis, until a signed test event is processed by a real
# worker. Its own database (TETHER_QUICKSTART_DB) and Redis database (TETHER_REDIS_DB, default 13).
quickstart-check: $(VENV)/.installed-test
	./tests/ensure_services.sh
	$(PY) -m tests.quickstart.check

# The documentation site (mkdocs.yml, docs/): served with live reload on http://127.0.0.1:8001
# (DOCS_ADDR to change it), or built into site/ with every warning an error (broken links and
# anchors, missing includes, docstrings that do not resolve).
DOCS_ADDR ?= 127.0.0.1:8001
export NO_MKDOCS_2_WARNING := 1

docs: $(VENV)/.installed-docs
	$(VENV)/bin/mkdocs serve --dev-addr $(DOCS_ADDR)

docs-check: $(VENV)/.installed-docs
	$(VENV)/bin/mkdocs build --strict --clean --site-dir site

# The admin screenshots of the docs (docs/images/), taken in headless Chromium from a sandbox of
# their own; installs Debian's chromium (as root) and playwright when missing. Not run in CI.
screenshots: $(VENV)/.installed-sandbox
	$(PY) docs/screenshots.py

# The soak: "nothing lost" under piled-up faults, on a stack of its own (see bench/README.md).
chaos: $(VENV)/.installed-test
	./tests/ensure_services.sh
	$(PY) bench/chaos.py $(CHAOS_ARGS)

chaos-smoke: $(VENV)/.installed-test
	./tests/ensure_services.sh
	$(PY) bench/chaos.py --smoke $(CHAOS_ARGS)

# Lint: ruff's rules and formatting on the whole tree, then mypy (config in pyproject.toml, with
# the django-stubs and DRF plugins, which import tests.settings) on the packages we ship:
# LINT_MYPY_PACKAGES, all three by default; name fewer to check a subset, e.g.
# `make lint LINT_MYPY_PACKAGES="tether integrations"` (the others are still read for their
# types, but only the packages named report errors).
LINT_MYPY_PACKAGES ?= tether integrations webhooks

lint: $(VENV)/.installed-test
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy --follow-imports=silent $(LINT_MYPY_PACKAGES)

clean:
	rm -rf .sandbox .pytest_cache .ruff_cache .mypy_cache .hypothesis site
