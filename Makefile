# attnlab: install and test.
#   make install       .venv with torch (CPU wheel), the project and its dev tools
#   make install-ffcv  Debian build deps of FFCV (apt), then the ffcv extra
#   make install-services  Debian packages the tests use (postgresql, chromium, iproute2)
#   make test          all of the above, then the test suite
# Every pip call passes -c constraints.txt so that nothing upgrades torch/torchvision.

PY ?= python3
VENV := .venv
VPY := $(VENV)/bin/python
PIP := $(VPY) -m pip
PIP_FLAGS := --disable-pip-version-check --progress-bar off
STAMP := $(VENV)/.installed
FFCV_STAMP := $(VENV)/.installed-ffcv
FFCV_APT := pkg-config libopencv-dev libturbojpeg0-dev
PYTEST_ARGS ?=

.PHONY: venv install install-ffcv install-services test demo stack-down

venv: $(VPY)

$(VPY):
	$(PY) -m venv $(VENV)

install: $(STAMP)

# torch first and by exact version: pip then takes the CPU wheel (find-links) instead of
# resolving torch through torchvision to the registry's CUDA build.
$(STAMP): pyproject.toml constraints.txt infra/fix_torchvision.py | $(VPY)
	$(PIP) install $(PIP_FLAGS) -c constraints.txt torch==2.13.0
	$(PIP) install $(PIP_FLAGS) -c constraints.txt -e '.[dev]'
	$(VPY) infra/fix_torchvision.py
	@touch $@

install-ffcv: $(FFCV_STAMP)

$(FFCV_STAMP): $(STAMP)
	@set -e; \
	if pkg-config --exists opencv4 libturbojpeg 2>/dev/null; then \
	  echo "install-ffcv: opencv4 and libturbojpeg found by pkg-config"; \
	else \
	  sh infra/apt_install.sh install-ffcv $(FFCV_APT); \
	fi
	$(PIP) install $(PIP_FLAGS) -c constraints.txt -e '.[ffcv]'
	$(VPY) -c 'import ffcv, importlib.metadata as m; print("install-ffcv: ffcv", m.version("ffcv"), "imports")'
	@touch $@

# Debian services the tests use for real: PostgreSQL (MLflow's cluster backend), Chromium (the
# MLflow UI check), iproute2 (network namespaces of the two-node test). Installed with apt-get
# where missing; ATTNLAB_SKIP_SERVICES=1 skips this (the tests that need them then fail, unless
# their own ATTNLAB_SKIP_* variable is set too).
SERVICES_APT := postgresql chromium iproute2
SERVICES_STAMP := $(VENV)/.installed-services

install-services: $(SERVICES_STAMP)

$(SERVICES_STAMP): | $(VPY)
	@set -e; \
	if [ "$${ATTNLAB_SKIP_SERVICES:-0}" = 1 ]; then echo "install-services: skipped (ATTNLAB_SKIP_SERVICES=1)"; exit 0; fi; \
	sh infra/apt_install.sh install-services $(SERVICES_APT) \
	  || { echo "install-services: or set ATTNLAB_SKIP_SERVICES=1" >&2; exit 1; }; \
	touch $@

# FFCV and the services are part of the test install. A user who cannot install them says so
# explicitly: ATTNLAB_SKIP_FFCV=1 (the FFCV tests are skipped), ATTNLAB_SKIP_BROWSER=1,
# ATTNLAB_SKIP_NETNS=1. Without those variables a failed install fails `make test`.
test: install
	@if [ "$${ATTNLAB_SKIP_FFCV:-0}" = 1 ]; then echo "test: FFCV skipped (ATTNLAB_SKIP_FFCV=1)"; \
	 else $(MAKE) --no-print-directory install-ffcv; fi
	@$(MAKE) --no-print-directory install-services
	$(VENV)/bin/ruff check .
	$(VPY) -m pytest -q $(PYTEST_ARGS)

# The main job on the embedded default: a local Ray head and MLflow server on 127.0.0.1 (state,
# logs and the Ray auth token in $(STATE)), the smoke grid (ResNet-20 on the built-in digits)
# submitted with `ray job submit`, its summary and the MLflow address.
STATE ?= $(CURDIR)/.stack
MLFLOW_PORT ?= 5000
RAY_PORT ?= 6379
DASHBOARD_PORT ?= 8265
DEMO_SPEC ?= experiments/specs/smoke.yaml
DEMO_ARGS ?=

demo: install
	$(VPY) -m infra.stack up --state $(STATE) --mlflow-port $(MLFLOW_PORT) --ray-port $(RAY_PORT) --dashboard-port $(DASHBOARD_PORT)
	@set -e; eval "$$($(VPY) -m infra.stack env --state $(STATE))"; \
	export PATH=$(CURDIR)/$(VENV)/bin:$$PATH; \
	$(VPY) -m infra.submit --state $(STATE) -- \
	  python experiments/grid.py --spec $(DEMO_SPEC) --storage $(STATE)/ray_results --resume $(DEMO_ARGS)
	@set -e; eval "$$($(VPY) -m infra.stack env --state $(STATE))"; \
	$(VPY) -m experiments.report --grid $$($(VPY) -c 'import sys, yaml; print(yaml.safe_load(open(sys.argv[1]))["name"])' $(DEMO_SPEC)) \
	  --out $(STATE)/report
	@echo "Stop the local stack with: make stack-down"

stack-down:
	$(VPY) -m infra.stack down --state $(STATE)
