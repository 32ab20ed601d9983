# The two commands of the README:
#   make demo   runs the quickstart notebook headless on the built-in local pool (HTML in artifacts/)
#   make test   runs the test suite (unit, integration, notebook, browser)
# Both create their own virtual environment in .venv on first use.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
ARTIFACTS ?= artifacts

.PHONY: demo test lint typecheck stubs-check tables-check check bench bench-quick clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[dev,notebook,numpy,dspy,ray]"
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

tables-check: $(STAMP)
	$(BIN)/python scripts/bench_table.py --check

check: lint typecheck stubs-check tables-check

# Side-by-side benchmarks (JSON); the full run updates benchmarks/results/.
bench: $(STAMP)
	$(BIN)/python benchmarks/bench_data.py > /dev/null
	$(BIN)/python benchmarks/bench_calls.py > /dev/null
	$(BIN)/python benchmarks/bench_variables.py > benchmarks/results/bench_variables.json
	$(BIN)/python benchmarks/bench_codec.py > benchmarks/results/bench_codec.json
	$(BIN)/python benchmarks/bench_ray.py > /dev/null
	$(BIN)/python scripts/bench_table.py --write

# A smoke run of the same benchmarks (under a minute); results go to $(ARTIFACTS)/.
bench-quick: $(STAMP)
	mkdir -p $(ARTIFACTS)
	$(BIN)/python benchmarks/bench_data.py --quick --no-ipyparallel --out $(ARTIFACTS)/bench_data.json > /dev/null
	$(BIN)/python benchmarks/bench_calls.py --quick --no-ipyparallel --out $(ARTIFACTS)/bench_calls.json > /dev/null
	$(BIN)/python benchmarks/bench_variables.py --n 300 --seconds 1 > $(ARTIFACTS)/bench_variables.json
	@echo "benchmark smoke results are in $(ARTIFACTS)/"

clean:
	rm -rf $(VENV) $(ARTIFACTS) .pytest_cache .mypy_cache .ruff_cache
