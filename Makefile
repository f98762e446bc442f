# The two commands a new user needs: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
TORCH_PIN := torch==2.13.0

.PHONY: demo test install install-test lint clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

# Stamp files: reinstall only when pyproject.toml changes.
$(VENV)/.installed: $(PY) pyproject.toml
	$(PY) -m pip install -q $(TORCH_PIN)
	$(PY) -m pip install -q -e '.[serve]'
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed pyproject.toml
	$(PY) -m pip install -q -e '.[test]'
	touch $@

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test

demo: install
	$(VENV)/bin/minigpt compare --preset quick --out runs/demo
	@echo "Play with the models in a browser: $(VENV)/bin/minigpt serve --study runs/demo"

test: install-test
	bash scripts/ensure-chromium.sh || true
	$(VENV)/bin/ruff check src tests
	$(PY) -m pytest -n 2 tests

lint: install-test
	$(VENV)/bin/ruff check src tests

clean:
	rm -rf runs .pytest_cache
