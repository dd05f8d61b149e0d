# robustlab: `make demo` runs the main job on Fashion-MNIST; `make test` runs the checks and tests.
# Both bootstrap what they need on a fresh Debian machine with Python >= 3.10: a .venv here,
# torch + torchvision, robustlab in editable mode with dev extras, and the Fashion-MNIST files;
# `make pytest` also installs Debian's chromium + chromium-driver when it can (the browser tests skip without).

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.robustlab-installed
TORCH_PIN ?= torch==2.14.1 torchvision==0.29.1

.PHONY: demo test lint typecheck pytest data browser install clean-venv

install: $(STAMP)

$(PY):
	@$(PYTHON) -m venv $(VENV) || { rm -rf $(VENV); \
	  if command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	    echo "python venv unavailable: installing Debian's python3-venv" >&2; \
	    apt-get update -qq && apt-get install -y -qq python3-venv >/dev/null && $(PYTHON) -m venv $(VENV); \
	  else false; fi; } || { rm -rf $(VENV); \
	  echo "cannot create $(VENV) with $(PYTHON) -m venv: install python3-venv (sudo apt-get install python3-venv) or pass PYTHON=/path/to/python3.11" >&2; exit 1; }

$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet $(TORCH_PIN)
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

data:
	bash scripts/ensure-data.sh

browser:
	bash scripts/ensure-browser.sh

demo: $(STAMP) data
	$(VENV)/bin/robustlab demo

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks

typecheck: $(STAMP)
	$(VENV)/bin/mypy src

pytest: $(STAMP) data browser
	$(VENV)/bin/pytest -q

test: lint typecheck pytest

clean-venv:
	rm -rf $(VENV)
