# NeuroEdge developer entry points. Everything runs from .venv, created by `make install`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
DATA ?= ../shared/data/brain_tumor_dataset
BUNDLE := models/default_bundle
STAMP := $(VENV)/.installed

.PHONY: install run test lint bench bundle clean

install: $(STAMP)

# Re-run only when the dependency declarations change: quick when already done.
$(STAMP): setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade --quiet pip
	$(PY) -m pip install --quiet -e '.[device,coordinator,train,test]'
	$(PY) -m pip check
	touch $@

# The main job: until the appliance lands, verify the shipped bundle and evaluate it
# through LiteRT on the held-out files its manifest names.
run: install
	$(PY) -m models verify $(BUNDLE)
	$(PY) -m models evaluate --model $(BUNDLE) --data $(DATA) --split test

test: install
	$(PY) -m flake8 models device coordinator tests
	$(PY) -m pytest

bench: install
	$(PY) -m models bench --data $(DATA)

# Rebuild the shipped default bundle from the shared dataset (see README).
bundle: install
	$(PY) -m models train --data $(DATA) --arch edge --out $(BUNDLE) --sign-key models/dev_keys/dev_signing.key

clean:
	rm -rf $(VENV) build *.egg-info
