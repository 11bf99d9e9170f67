# Set-up and everyday commands. `make serve` and `make test` are the two a newcomer needs.
VENV ?= .venv
PY := $(VENV)/bin/python
# The PyTorch build, chosen here and never detected: TORCH=cpu (default) installs torch==$(TORCH_VERSION)
# from pip's configured index (set TORCH_INDEX=https://download.pytorch.org/whl/cpu for PyTorch's
# CPU-only wheel); TORCH=cu126 or TORCH=cu128 installs that CUDA 12 build from PyTorch's index.
# Changing TORCH, TORCH_VERSION or TORCH_INDEX reinstalls torch on the next `make setup`.
TORCH ?= cpu
TORCH_VERSION ?= 2.13.0
TORCH_INDEX ?= $(if $(filter cpu,$(TORCH)),,https://download.pytorch.org/whl/$(TORCH))
TORCH_REQ := torch==$(TORCH_VERSION)$(if $(filter cpu,$(TORCH)),,+$(TORCH))
TORCH_PIP := '$(TORCH_REQ)' $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
TORCH_STAMP := $(VENV)/.torch-build
# `make serve CONFIG=configs/serve-omniavatar-tiny.yaml PORT=8181`; the port defaults to the config's.
CONFIG ?= serve_config.yaml
PORT ?=
export RAY_USAGE_STATS_ENABLED ?= 0

.PHONY: setup serve test bench clean tiny-model FORCE

setup: $(VENV)/.installed

# Holds the torch build's pip arguments; rewritten (and so newer than .installed) only when they change.
$(TORCH_STAMP): FORCE
	@mkdir -p $(VENV)
	@echo "$(TORCH_PIP)" | cmp -s - $@ || echo "$(TORCH_PIP)" > $@

$(VENV)/.installed: pyproject.toml $(TORCH_STAMP)
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(if $(filter $(TORCH_STAMP),$?),--force-reinstall) $(TORCH_PIP)
	$(PY) -m pip install -q -e '.[serve,test]'
	touch $@

serve: setup
	$(PY) -m deploy.launch $(CONFIG) $(if $(PORT),--port $(PORT))

test: setup browser-deps
	$(PY) -m pytest

# Debian's chromium for the browser test (Playwright's own browser download is not used); skipped when present.
.PHONY: browser-deps
browser-deps:
	@if [ -x /usr/bin/chromium ]; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ]; then SUDO=; elif command -v sudo >/dev/null 2>&1; then SUDO=sudo; \
	else echo "browser-deps: run as root or install sudo to install Debian's chromium" >&2; exit 1; fi; \
	$$SUDO apt-get update && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y --no-install-recommends chromium

bench: setup
	$(PY) -m bench

clean:
	rm -rf $(VENV) .cache .pytest_cache

tiny-model: setup
	$(PY) -m model.omniavatar.tiny .cache/omniavatar-tiny
