# Thin targets; the logic lives in Python. `make demo` and `make test` work on a fresh clone.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# pyproject.toml's requires-python (">=3.11,<3.13") as the lowest minor version and the first one refused, read
# from it so the two never disagree.
PY_MINORS := $(shell sed -n 's/^requires-python *= *">=3\.\([0-9]*\),<3\.\([0-9]*\)".*/\1 \2/p' pyproject.toml)
PY_LOW := $(word 1,$(PY_MINORS))
PY_END := $(word 2,$(PY_MINORS))
GOAL = $(or $(MAKECMDGOALS),install)

# Before the venv is made: $(PYTHON) runs and its version is one pyproject.toml allows (another fails deep inside
# pip), and a venv already there was made by that same version (a second one on top leaves a venv of two Pythons).
# Each refusal is one `error:` line with the command that works; nothing is created.
define CHECK_PYTHON
fix=python3.$(PY_LOW); for m in $$(seq $$(($(PY_END) - 1)) -1 $(PY_LOW)); do \
  python3.$$m -c '' >/dev/null 2>&1 && fix=python3.$$m && break; done; \
need="Python 3.$(PY_LOW) to 3.$$(($(PY_END) - 1)) (pyproject.toml requires-python)"; \
v=$$($(PYTHON) -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null) || { \
  echo "error: PYTHON=$(PYTHON) does not run; LoRA Gym needs $$need: run make $(GOAL) PYTHON=$$fix" >&2; exit 2; }; \
minor=$${v#3.}; if [ "$${v%%.*}" != 3 ] || [ "$$minor" -lt $(PY_LOW) ] || [ "$$minor" -ge $(PY_END) ]; then \
  echo "error: $(PYTHON) is Python $$v; LoRA Gym needs $$need: run make $(GOAL) PYTHON=$$fix" >&2; exit 2; fi; \
if [ -f $(VENV)/pyvenv.cfg ]; then \
  made=$$(sed -n 's/^version[_info]* *= *\([0-9]*\.[0-9]*\).*/\1/p' $(VENV)/pyvenv.cfg | head -n 1); \
  if [ "$$made" != "$$v" ]; then echo "error: $(VENV) was made by Python $$made, and $(PYTHON) is $$v: run make \
clean$(if $(filter-out .venv,$(VENV)), VENV=$(VENV)), then make $(GOAL) PYTHON=$(PYTHON)" >&2; exit 2; fi; fi
endef

.PHONY: install install-dev backends skypilot test lint demo golden bench clean image-wan21 image-wan22 push-wan21 \
	push-wan22 lock-weights docs figures

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
	@$(CHECK_PYTHON)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(QUIET_PIP) -e '.[dataset]'
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed
	$(QUIET_PIP) -e '.[dev]'
	touch $@

backends: install              ## the backends' SDKs (pyproject extras local, modal, runpod) into $(VENV)
	$(QUIET_PIP) -e '.[local,modal,runpod]'

# SkyPilot pins click<8.2, which would pull the main venv's packages back: it gets a venv of its own (as in
# .ci/run), and `--backend skypilot` runs as .venv-skypilot/bin/launcher.
skypilot:
	$(PYTHON) -m venv .venv-skypilot
	.venv-skypilot/bin/pip install --quiet --upgrade pip
	PYTHONWARNINGS="ignore:Editable installation:UserWarning" .venv-skypilot/bin/pip install --quiet -e '.[skypilot]'

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
