# DAKRSegmentation: `make demo` and `make test` do all set-up on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
# The torch build to install first. CUDA users: make TORCH_SPEC="torch==2.13.0 --index-url <your CUDA wheel index>" demo
TORCH_SPEC ?= torch==2.13.0
DEMO_OUT ?= demo_output
PYTEST_ARGS ?=

BIN := $(VENV)/bin
BASE_STAMP := $(VENV)/.dakr-base
TEST_STAMP := $(VENV)/.dakr-test

.PHONY: demo test test-fast benchmark clean

$(BASE_STAMP): python_backend/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install $(TORCH_SPEC)
	$(BIN)/pip install -e python_backend
	touch $@

$(TEST_STAMP): $(BASE_STAMP)
	$(BIN)/pip install -e "python_backend[test]"
	touch $@

demo: $(BASE_STAMP)
	$(BIN)/dakr demo --out $(DEMO_OUT)

test: $(TEST_STAMP)
	$(BIN)/python -m pytest -n 2 $(PYTEST_ARGS)

test-fast: $(TEST_STAMP)
	$(BIN)/python -m pytest -n 2 -m "not slow" $(PYTEST_ARGS)

benchmark: $(BASE_STAMP)
	$(BIN)/dakr benchmark --config quick --out benchmark_output

clean:
	rm -rf $(VENV) $(DEMO_OUT) benchmark_output
