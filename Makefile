# The README's two commands: `make demo` and `make test`. Both bootstrap what they
# need (Debian packages for a virtual display, a virtual environment, torch's CPU
# build before anything that depends on torch, the package with its test extras)
# and are quick the second time.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
SYSSTAMP := $(VENV)/.sysdeps
TORCH_PIN ?= torch==2.13.0
APT_PACKAGES := xvfb xauth libgl1-mesa-dri libegl1 libxkbcommon-x11-0 libxcb-icccm4 libxcb-image0 \
	libxcb-keysyms1 libxcb-randr0 libxcb-render-util0 libxcb-xinerama0 libxcb-xinput0 libxcb-xfixes0 \
	libxcb-shape0 libxcb-cursor0 libdbus-1-3 libfontconfig1
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
# Under a real display run as is; without one, render into Xvfb.
NEED_XVFB := $(shell [ -n "$$DISPLAY" ] && [ -z "$$CI" ] || echo yes)
XRUN := $(if $(NEED_XVFB),xvfb-run -a -s "-screen 0 1600x1000x24",)
PYTEST_ARGS ?=

.PHONY: demo test setup sysdeps clean bench

setup: $(STAMP) $(SYSSTAMP)

$(SYSSTAMP):
	@missing=$$(for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "Installing Debian packages for a virtual display: $$missing"; \
		$(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi
	@mkdir -p $(VENV) && touch $@

$(STAMP): pyproject.toml
	@[ -x $(PY) ] || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_PIN)"
	$(PY) -m pip install -q -e ".[testing]"
	@touch $@

demo: setup
	QT_API=pyqt6 $(XRUN) $(VENV)/bin/neurosynth demo $(if $(XRUN),--offscreen,)

test: setup
	QT_API=pyqt6 $(XRUN) $(PY) -m pytest -q $(PYTEST_ARGS)

bench: setup
	$(PY) benchmarks/bench_inference.py

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache
