# Everything runs inside a local virtual environment (.venv), created on first use.
# torch is pinned first so that pip takes the CPU build (see README for other machines).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.13.0

.PHONY: install test test-fast demo docs notebooks benchmark clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -e ".[test]"
	touch $@

install: $(VENV)/.installed

test: $(VENV)/.installed
	$(PY) -m pytest -q

test-fast: $(VENV)/.installed
	$(PY) -m pytest -q -m "not slow"

demo: $(VENV)/.installed
	$(PY) -m pyro_qem.demo

# API reference and rendered tutorials (stored outputs, nothing executed), warnings as errors.
docs: $(VENV)/.installed
	$(PY) -m sphinx -W --keep-going -b html docs docs/_build/html
	@echo "open docs/_build/html/index.html"

# Rewrite and re-execute every tutorial notebook from tutorials/build_notebooks.py.
notebooks: $(VENV)/.installed
	$(PY) tutorials/build_notebooks.py

benchmark: $(VENV)/.installed
	$(PY) -m benchmarks.compare

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache docs/_build docs/tutorials
