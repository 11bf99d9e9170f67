# Set-up and everyday commands. `make serve` and `make test` are the two a newcomer needs.
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU build on machines without CUDA; override, e.g. TORCH_SPEC='torch>=2.13,<2.15', for a CUDA build.
TORCH_SPEC ?= $(shell command -v nvidia-smi >/dev/null 2>&1 && echo 'torch>=2.13,<2.15' || echo 'torch==2.13.0')
export RAY_USAGE_STATS_ENABLED ?= 0

.PHONY: setup serve test bench clean tiny-model

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e '.[test]'
	touch $@

serve: setup
	$(VENV)/bin/serve run serve_config.yaml

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
