# Atoll — two commands on a fresh Debian machine with Python 3.11:
#   make serve   create .venv, install Atoll, start it on the embedded default (S3 on 127.0.0.1:9000)
#   make test    install what the tests need (Python packages, Debian packages) and run the suite: in parallel,
#                then the `serial` tests alone (scripts/run-tests.sh; TEST_WORKERS=N sets the parallelism)
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip
# pytest-xdist workers of the parallel test phase: the tests often wait, so more workers than CI's 2 cores
TEST_WORKERS ?= 4

.PHONY: serve test test-deps bench soak install clean docs

$(VENV)/.created:
	@$(PYTHON) -m venv $(VENV) 2>/dev/null || (bash scripts/apt-install.sh python3-venv && rm -rf $(VENV) && $(PYTHON) -m venv $(VENV))
	@$(PIP) install -q --upgrade pip
	@touch $@

$(VENV)/.installed: $(VENV)/.created pyproject.toml
	@$(PIP) install -q -e .
	@touch $@

$(VENV)/.test-installed: $(VENV)/.installed pyproject.toml
	@$(PIP) install -q -e '.[test]'
	@touch $@

install: $(VENV)/.installed

serve: $(VENV)/.installed
	$(VENV)/bin/atoll serve $(ARGS)

test-deps: $(VENV)/.test-installed
	@bash scripts/install-test-deps.sh

test: test-deps
	PY=$(PY) TEST_WORKERS=$(TEST_WORKERS) bash scripts/run-tests.sh $(PYTEST_ARGS)

bench: $(VENV)/.test-installed
	bash bench/run.sh

soak: test-deps
	$(PY) -m bench.soak

# docs/configuration.md is generated from the config schema (atoll/config.py SETTINGS); a test keeps it current
docs: $(VENV)/.installed
	$(VENV)/bin/atoll config reference > docs/configuration.md

clean:
	rm -rf $(VENV) atoll-data .pytest_cache
