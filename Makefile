# The README's two commands: `make demo` and `make test`. Each creates .venv when missing and
# installs with constraints.txt, so torch stays at the pinned CPU build.
PYTHON ?= python3
VENV := .venv
PIP := $(VENV)/bin/pip install -c constraints.txt
export TORCHINDUCTOR_CACHE_DIR := $(CURDIR)/build/inductor-cache

.PHONY: test demo bench docs venv

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) --upgrade pip

$(VENV)/.test: $(VENV)/bin/python setup.cfg constraints.txt
	$(PIP) torch==2.13.0
	$(PIP) -e ".[test]"
	touch $@

$(VENV)/.examples: $(VENV)/bin/python setup.cfg constraints.txt
	$(PIP) torch==2.13.0
	$(PIP) -e ".[examples]"
	touch $@

$(VENV)/.all: $(VENV)/bin/python setup.cfg constraints.txt
	$(PIP) torch==2.13.0
	$(PIP) -e ".[test,examples,benchmark,docs]"
	touch $@

test: $(VENV)/.test
	$(VENV)/bin/python -m pytest -q

# Options go through ARGS, e.g. make demo ARGS="--text notes.txt --steps 500" (see --help).
demo: $(VENV)/.examples
	$(VENV)/bin/python examples/gpt_lora.py $(ARGS)

bench: $(VENV)/.all
	$(VENV)/bin/python -m benchmarks

$(VENV)/.docs: $(VENV)/bin/python setup.cfg constraints.txt
	$(PIP) torch==2.13.0
	$(PIP) -e ".[docs]"
	touch $@

# The site, built offline into site/; NO_MKDOCS_2_WARNING silences Material's banner (not a warning).
docs: $(VENV)/.docs
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict
