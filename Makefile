# One entry point: every target creates the virtual environment it needs.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: all demo test lint typecheck pytest bench clean

all: test

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -I -m pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -e '.[dev]'
	touch $(STAMP)

# mypy cannot follow setuptools' editable import hook, so it reads the
# packages through links carrying their import names.
.typecheck:
	mkdir -p .typecheck
	ln -sfn ../sidecar .typecheck/openai_runtime_sidecar
	ln -sfn ../operator .typecheck/openai_runtime_operator

demo: $(STAMP)
	$(VENV)/bin/openai-runtime demo

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: $(STAMP) .typecheck
	cd .typecheck && MYPYPATH=. ../$(VENV)/bin/mypy --config-file ../pyproject.toml -p openai_runtime_sidecar -p openai_runtime_operator

pytest: $(STAMP)
	$(VENV)/bin/pytest

test: lint typecheck pytest

clean:
	rm -rf $(VENV) .typecheck .pytest_cache .mypy_cache .ruff_cache
