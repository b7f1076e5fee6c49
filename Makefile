# NeuroEdge developer entry points. Everything runs from .venv, created by `make install`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
DATA ?= ../shared/data
KAGGLE ?= $(DATA)/brain_tumor_dataset
BUNDLE := models/default_bundle
STAMP := $(VENV)/.installed

SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: install system-deps run test faults bench bundle clean ansible-e2e screenshots

install: $(STAMP)

# Re-run only when the dependency declarations change: quick when already done.
$(STAMP): setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade --quiet pip
	$(PY) -m pip install --quiet -e '.[device,coordinator,train,test,flower]'
	$(PY) -m pip check
	touch $@

# Debian packages: Chromium for the browser test (Playwright cannot download its own
# browser here), wrk, the HTTP load generator of `make bench`, and faketime, which moves
# the appliance's clock in the fault suite.
system-deps:
	@command -v chromium >/dev/null && command -v wrk >/dev/null && command -v faketime >/dev/null \
		|| { $(SUDO) apt-get update -qq && \
		$(SUDO) apt-get install -y -qq chromium wrk faketime >/dev/null; }

# The main job: the appliance on the shipped default bundle. Off a Raspberry Pi the
# LED and button run on gpiozero's mock pin factory.
run: install
	@echo "The command lines live in $(VENV): $(VENV)/bin/neuroedge-device --help,"
	@echo "$(VENV)/bin/neuroedge-coordinator --help and $(VENV)/bin/neuroedge-models --help"
	@echo "(or '. $(VENV)/bin/activate' first, then neuroedge-device ... by name)."
	@echo "Starting: $(VENV)/bin/neuroedge-device serve"
	@if ! grep -qs "Raspberry Pi" /proc/device-tree/model; then \
		export GPIOZERO_PIN_FACTORY=$${GPIOZERO_PIN_FACTORY:-mock}; fi; \
	exec $(VENV)/bin/neuroedge-device serve

test: install system-deps
	$(PY) -m flake8 models device coordinator tests
	$(VENV)/bin/lint-imports
	$(PY) -m pytest -m "not fault"
	$(MAKE) --no-print-directory faults

# The fault suite (docs/operations.md, "Faults"): kill -9 of either service at each
# stage, a full disk, a clock jump, a coordinator that is slow or answers garbage. It
# ends with the line "faults: N passed, M failed".
faults: install system-deps
	$(PY) -m pytest -m fault

# The pictures of docs/clinician.md, saved by the browser tests as they run.
screenshots: install system-deps
	NEUROEDGE_SCREENSHOTS=docs/img $(PY) -m pytest -q -p no:cacheprovider tests/e2e/test_browser.py \
		tests/e2e/test_study_viewer.py

bench: install system-deps
	$(PY) -m models bench --data $(KAGGLE)
	$(PY) -m device.bench
	$(PY) -m device.bench --cpus 0
	$(PY) -m coordinator.bench

# Rebuild the shipped default bundle from every site of the shared data's manifest
# (docs/model-card.md, "How it was trained").
bundle: install
	$(PY) -m models train --data $(DATA) --arch edge --out $(BUNDLE) \
		--sign-key models/dev_keys/dev_signing.key --float-out models/default_float.weights.h5

# Provisioning test: ansible/deploy.yml, backup.yml and restore.yml against a coordinator and
# two Pi-like targets booted with systemd-nspawn (root, Debian 12; caches in
# /var/cache/neuroedge-ci). Its timings: docs/operations.md, "Testing the playbook".
ansible-e2e:
	$(SUDO) tests/ansible/run_e2e.sh

clean:
	rm -rf $(VENV) build *.egg-info
