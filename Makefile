# Thin targets; the logic lives in Python. `make demo` and `make test` work on a fresh clone.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install install-dev test lint demo golden bench docs figures clean image-wan21 image-wan22 push-wan21 push-wan22 lock-weights

# Images: `make image-wan22 [FLAVOR=full|slim] [TASKS=all|t2v|i2v] [ENGINE=docker|podman] [REGISTRY=...]
# [MAX_LAYER_GB=9]`; a missing images/<family>/weights.lock.json is pinned from the Hub first (commit it).
# IMAGE_OPTS passes more options to `python -m launcher.imagebuild` (e.g. --base-image, --network host).
ENGINE ?= docker
REGISTRY ?=
FLAVOR ?= full
TASKS ?= all
MAX_LAYER_GB ?= 9
IMAGE_OPTS ?=
IMAGE_ARGS = --family $* --flavor $(FLAVOR) --tasks $(TASKS) --engine $(ENGINE) --registry "$(REGISTRY)" \
	--max-layer-gb $(MAX_LAYER_GB) $(IMAGE_OPTS)

install: $(VENV)/.installed            ## the launcher, the entrypoint and the dataset tools; no test tools
install-dev: $(VENV)/.installed-dev    ## plus pytest, ruff, torch (CPU), Pillow, PyAV, modal

# setuptools warns on every editable install that a folder named like the package may shadow it; ours is
# that package, so that one warning is silenced (any other still shows).
QUIET_PIP = PYTHONWARNINGS="ignore:Editable installation:UserWarning" $(BIN)/pip install --quiet

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(QUIET_PIP) -e '.[dataset]'
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed
	$(QUIET_PIP) -e '.[dev]'
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

docs: install-dev              ## the documentation site into site/ (`$(BIN)/mkdocs serve` shows it while you edit)
	$(BIN)/mkdocs build --strict

figures: install-dev           ## regenerate the figures the docs share with the code (tools/docs_figures.py)
	$(BIN)/python tools/docs_figures.py

image-wan21 image-wan22: image-%: install
	$(BIN)/python -m launcher.imagebuild build $(IMAGE_ARGS)

push-wan21 push-wan22: push-%: install
	$(BIN)/python -m launcher.imagebuild push $(IMAGE_ARGS)

lock-weights: install          ## resolve images/$(FAMILY)/weights.lock.json from the Hub (needs internet)
	@test -n "$(FAMILY)" || (echo "error: say which family: make lock-weights FAMILY=wan22" >&2; exit 2)
	$(BIN)/python -m launcher.weights lock --family $(FAMILY) --out images/$(FAMILY)/weights.lock.json

clean:
	rm -rf $(VENV) .venv-skypilot build site *.egg-info .pytest_cache .ruff_cache
