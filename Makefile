# DAKRSegmentation: `make demo` and `make test` do all set-up on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
# The torch build to install first. CUDA users: make TORCH_SPEC="torch==2.13.0 --index-url <your CUDA wheel index>" demo
TORCH_SPEC ?= torch==2.13.0
DEMO_OUT ?= demo_output
PYTEST_ARGS ?=
# Exact versions of this venv; pyproject.toml holds ranges (what goes into Slicer's Python).
CONSTRAINTS := python_backend/constraints.txt
# A Python 3.12 venv standing in for Slicer's (5.10+) Python with Slicer's bundled numpy, scipy, SimpleITK.
SLICER_PYTHON ?= $(shell for p in $$(ls -d $$(pyenv root 2>/dev/null || echo $$HOME/.pyenv)/versions/3.12*/bin/python3.12 2>/dev/null) $$(command -v python3.12); do "$$p" -c "" 2>/dev/null && { echo "$$p"; break; }; done)
SLICER_VENV ?= .venv-slicer-py312
SLICER_BUNDLED := numpy==2.3.4 scipy==1.16.3 SimpleITK==2.5.3
# Tests that need neither torch nor PySide6: the module, the install plan, the torch-free backend layers.
SLICER_PYTHON_TESTS := $(addprefix Testing/Python/,test_module_widget.py test_mrml_io.py test_results.py test_client.py \
	test_supported_versions.py test_backend_process.py test_install_plan.py test_backend_without_torch.py)

BIN := $(VENV)/bin
BASE_STAMP := $(VENV)/.dakr-base
TEST_STAMP := $(VENV)/.dakr-test

.PHONY: demo test test-fast test-slicer-python benchmark clean

$(BASE_STAMP): python_backend/pyproject.toml $(CONSTRAINTS)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install $(TORCH_SPEC)
	$(BIN)/pip install -c $(CONSTRAINTS) -e "python_backend[demo,report]"
	touch $@

$(TEST_STAMP): $(BASE_STAMP)
	$(BIN)/pip install -c $(CONSTRAINTS) -e "python_backend[test]"
	touch $@

$(SLICER_VENV)/.dakr-stand-in: python_backend/pyproject.toml $(CONSTRAINTS)
	$(SLICER_PYTHON) -m venv $(SLICER_VENV)
	$(SLICER_VENV)/bin/pip install $(SLICER_BUNDLED) packaging
	$(SLICER_VENV)/bin/pip install slicer-core==5.13.31053.0 pytest==9.2.0
	touch $@

demo: $(BASE_STAMP)
	$(BIN)/dakr demo --out $(DEMO_OUT)

test: $(TEST_STAMP) test-slicer-python
	$(BIN)/python -m pytest -n 2 $(PYTEST_ARGS)

# The module's tests, the install-plan check and a torch-free backend smoke test in the 3.12 stand-in.
test-slicer-python:
	@if [ -z "$(SLICER_PYTHON)" ]; then \
		echo "SKIPPED: no python3.12 found (pyenv or PATH); the Slicer-Python stand-in tests did not run."; \
	else \
		$(MAKE) $(SLICER_VENV)/.dakr-stand-in && \
		DAKR_SLICER_STAND_IN=1 PYTHONPATH=python_backend $(SLICER_VENV)/bin/python -m pytest -p no:cacheprovider $(PYTEST_ARGS) $(SLICER_PYTHON_TESTS); \
	fi

test-fast: $(TEST_STAMP)
	$(BIN)/python -m pytest -n 2 -m "not slow" $(PYTEST_ARGS)

benchmark: $(BASE_STAMP)
	$(BIN)/dakr benchmark --config quick --out benchmark_output

clean:
	rm -rf $(VENV) $(SLICER_VENV) $(DEMO_OUT) benchmark_output
