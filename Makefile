# LLM Internals: the course's commands. `make setup` once, then `make lab`.
PYTHON ?= python3
VENV   := .venv
PY     := $(abspath $(VENV))/bin/python
# A CPU build of torch is installed first where none is present, so nothing pulls a multi-GB
# CUDA build by accident. On a GPU machine: `make setup TORCH_SPEC="torch"` (or install torch first).
TORCH_SPEC ?= torch==2.13.0
# Every command below runs with the course's virtual environment first on PATH.
export PATH := $(abspath $(VENV))/bin:$(PATH)

NOTEBOOKS := $(sort $(wildcard notebooks/[0-9][0-9]_*.ipynb))
NBVAL     := --nbval-lax --nbval-sanitize-with tests/nbval_sanitize.cfg --nbval-cell-timeout=900

.PHONY: help setup test unit notebooks lab execute pretrain benchmarks clean

help:
	@echo "make setup      create .venv and install the course (CPU torch first, then requirements)"
	@echo "make lab        open JupyterLab on the course"
	@echo "make test       unit tests, then every notebook under nbval in fast mode (LLM_COURSE_FAST=1)"
	@echo "make execute    re-run every notebook in place in default mode (fresh committed outputs)"
	@echo "make pretrain   rebuild the course model in data/checkpoints/"

setup:
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -r requirements.txt -r requirements-dev.txt
	$(PY) -m pip install -q --no-deps -e .
	$(PY) -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (LLM Internals)" >/dev/null
	$(PY) -c "import utils, torch; print('setup ok: torch', torch.__version__)"

test: unit notebooks

unit:
	LLM_COURSE_FAST=1 $(PY) -m pytest tests

notebooks:
	LLM_COURSE_FAST=1 $(PY) -m pytest $(NBVAL) $(NOTEBOOKS)

# Loopback only; --allow-root only where we run as root (containers), which Jupyter refuses otherwise.
lab:
	$(PY) -m jupyter lab --ip=127.0.0.1 --notebook-dir=notebooks $(if $(filter 0,$(shell id -u)),--allow-root) $(LAB_ARGS)

# NB=notebooks/01_tokenization.ipynb re-executes one notebook.
execute:
	LLM_COURSE_FAST=0 $(PY) -m jupyter nbconvert --to notebook --execute --inplace \
		--ExecutePreprocessor.timeout=1800 $(or $(NB),$(NOTEBOOKS))

# The course model: trains the default recipe (utils/pretrain.py) and writes data/checkpoints/.
pretrain:
	$(PY) -m utils.pretrain

clean:
	rm -rf data/corpus data/cache .pytest_cache .hypothesis
