# The two commands of the README:
#   make demo   runs the quickstart notebook headless on the built-in local pool (HTML in artifacts/)
#   make test   runs the test suite (unit, integration, notebook, browser)
# Both create their own virtual environment in .venv on first use.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
ARTIFACTS ?= artifacts

.PHONY: demo test lint typecheck stubs-check check bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[dev,notebook,numpy,dspy]"
	touch $(STAMP)

demo: $(STAMP)
	mkdir -p $(ARTIFACTS)
	$(BIN)/jupyter nbconvert --to html --execute --ExecutePreprocessor.timeout=300 \
		--ExecutePreprocessor.store_widget_state=True \
		--output-dir $(ARTIFACTS) notebooks/quickstart.ipynb
	@echo "the executed quickstart is in $(ARTIFACTS)/quickstart.html" 

test: $(STAMP)
	$(BIN)/python scripts/ensure_chromium.py
	$(BIN)/pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

stubs-check: $(STAMP)
	$(BIN)/python scripts/gen_protos.py --check

check: lint typecheck stubs-check

bench: $(STAMP)
	$(BIN)/python -m benchmarks.run

clean:
	rm -rf $(VENV) $(ARTIFACTS) .pytest_cache .mypy_cache .ruff_cache
