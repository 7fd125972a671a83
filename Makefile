# Everything runs inside a local virtual environment (.venv), created on first use.
# torch is pinned first so that pip takes the CPU build (see README for other machines).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.13.0

.PHONY: install test test-fast demo benchmark clean

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

benchmark: $(VENV)/.installed
	$(PY) -m benchmarks.compare

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
