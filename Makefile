# Thin targets; the logic lives in Python. `make demo` and `make test` work on a fresh clone.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install install-dev test lint demo golden bench clean

install: $(VENV)/.installed            ## the launcher and entrypoint, no test tools
install-dev: $(VENV)/.installed-dev    ## plus pytest, ruff, torch (CPU), Pillow, PyAV, modal

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e .
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

test: install-dev
	$(BIN)/pytest -q

lint: install-dev
	$(BIN)/ruff check .

demo: install
	$(BIN)/launcher run --preset wan22-t2v-lightning --expert high --dataset examples/dataset --dry-run

golden: install-dev            ## re-pin the golden plans after an intended plan change; review the diff
	UPDATE_GOLDEN=1 $(BIN)/pytest -q tests/test_golden.py

bench: install-dev
	$(BIN)/python benchmarks/cli_startup.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
