# One entry point: every target creates the virtual environment it needs.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: all demo test lint typecheck pytest bench fuzz clean

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

# Benchmarks print figures and write bench/RESULTS.md; they are not tests.
# LiteLLM goes into its own virtual environment, made by the bench itself.
bench: $(STAMP)
	$(PY) bench/run.py

# Coverage-guided fuzzing of the SSE decoder for a bounded time (FUZZ_SECONDS).
# New inputs go to .fuzz/ (not committed); fuzz/corpus/ holds the seeds.
FUZZ_SECONDS ?= 60
fuzz: $(STAMP)
	$(VENV)/bin/pip install --quiet 'atheris>=2.3'
	mkdir -p .fuzz/sse
	$(PY) fuzz/fuzz_sse.py -max_total_time=$(FUZZ_SECONDS) .fuzz/sse fuzz/corpus/sse

clean:
	rm -rf $(VENV) .typecheck .pytest_cache .mypy_cache .ruff_cache .fuzz
