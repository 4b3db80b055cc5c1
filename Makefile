# LLM Internals: the course's commands. `make setup` once, then `make lab`.
PYTHON ?= python3
VENV   := .venv
PY     := $(abspath $(VENV))/bin/python
# The torch release the course is tested with. tools/install_torch.py installs it only where no torch
# meeting requirements.txt's minimum is present: the CPU build from PyTorch's CPU index on Linux without
# an NVIDIA GPU, the CUDA build where nvidia-smi finds one, the default build on macOS and Windows.
TORCH_SPEC ?= torch==2.13.0
# Every command below runs with the course's virtual environment first on PATH.
export PATH := $(abspath $(VENV))/bin:$(PATH)
# torch's OpenMP threads sleep instead of spinning when they wait: without this a training cell slows
# 10-20x whenever another program uses a core (benchmarks/contention.py). utils.runtime sets the same.
export OMP_WAIT_POLICY ?= PASSIVE
# `make execute DEVICE=cuda` (or mps, cpu) runs the notebooks on that device (utils.runtime.get_device).
ifdef DEVICE
export LLM_COURSE_DEVICE := $(DEVICE)
endif
# Quiet logs: pip's version nag; kernels talk to nbconvert over local IPC sockets rather than TCP
# (ipykernel warns about unencrypted TCP otherwise). The sockets get a fresh path per run: with the
# default path (kernel-ipc-N in the current folder) two runs started at once collide.
export PIP_DISABLE_PIP_VERSION_CHECK := 1
KERNEL_IPC := --KernelManager.transport=ipc --KernelManager.ip=$(shell mktemp -u /tmp/llm-course-kernel-XXXXXX)

NOTEBOOKS := $(sort $(wildcard notebooks/[0-9][0-9]_*.ipynb))
# -p tests.nbval_run_twice: each notebook runs a second time in the same kernel ("Run all" again, no restart)
NBVAL     := --nbval-lax --nbval-sanitize-with tests/nbval_sanitize.cfg --nbval-cell-timeout=900 -p tests.nbval_run_twice

.PHONY: help setup test unit notebooks test-browser lab execute pretrain finetune sync-setup-cell clean

help:
	@echo "make setup         create .venv and install the course (the right torch build first, then requirements)"
	@echo "make lab           open JupyterLab on the course (LAB_ARGS=\"--port 8899 --no-browser\" to pass options)"
	@echo "make test          in parallel: unit tests, every notebook under nbval in fast mode (run twice in one kernel), the browser test"
	@echo "make test-browser  run notebooks in JupyterLab in headless Chromium and use their widgets"
	@echo "make execute       re-run every notebook in place in default mode (NB=... for one, DEVICE=cuda for a GPU)"
	@echo "make pretrain      rebuild the course model in data/checkpoints/"
	@echo "make finetune      rebuild the fine-tuned models in data/finetuned/ (notebooks 07 and 08 use them)"

setup:
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) tools/install_torch.py --python $(PY) --spec "$(TORCH_SPEC)"
	$(PY) -m pip install -q -r requirements.txt -r requirements-dev.txt
	$(PY) -m pip install -q --no-deps -e .
	$(PY) -m utils.wordnet install
	$(PY) -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (LLM Internals)" >/dev/null
	$(PY) -c "import utils.runtime, torch; print('setup ok: torch', torch.__version__, '(CUDA)' if torch.cuda.is_available() else '')"

# The three parts run at once: each keeps about one of two cores busy on its own (kernel start-up, Python, the
# browser). --output-sync prints each part's output in one piece when that part ends (GNU make 4+; macOS's
# make 3.81 lacks it, and there the parts' lines interleave).
SYNC := $(if $(filter output-sync,$(.FEATURES)),--output-sync=target)
test:
	@echo "make test: unit, notebooks and test-browser run in parallel; with GNU make 4+ each part's output appears in one piece when it ends"
	$(MAKE) --no-print-directory -j3 $(SYNC) unit notebooks test-browser

unit:
	LLM_COURSE_FAST=1 $(PY) -m pytest tests --ignore=tests/browser --durations=15

notebooks:
	LLM_COURSE_FAST=1 $(PY) -m pytest $(NBVAL) $(NOTEBOOKS) --durations=15

# JupyterLab on a random loopback port, driven by Debian's Chromium (tests/browser/README in the test's docstring).
test-browser:
	LLM_COURSE_FAST=1 $(PY) -m pytest tests/browser

# Loopback only; --allow-root only where we run as root (containers), which Jupyter refuses otherwise.
# LAB_ARGS passes options through, e.g. make lab LAB_ARGS="--port 8899 --no-browser".
lab:
	$(PY) -m jupyter lab --ip=127.0.0.1 --notebook-dir=notebooks $(if $(filter 0,$(shell id -u)),--allow-root) $(LAB_ARGS)

# NB=notebooks/01_tokenization.ipynb re-executes one notebook; DEVICE=cuda runs them on a GPU.
execute:
	LLM_COURSE_FAST=0 $(PY) -m jupyter nbconvert --to notebook --execute --inplace $(KERNEL_IPC) \
		--ExecutePreprocessor.timeout=1800 $(or $(NB),$(NOTEBOOKS))

# The course model: trains the default recipe (utils/pretrain.py) and writes data/checkpoints/.
pretrain:
	$(PY) -m utils.pretrain

# The fine-tuned models notebooks 07 and 08 use (notebook 07's recipes): writes data/finetuned/.
finetune:
	$(PY) tools/finetune.py

# Copies notebooks/_setup_cell.py into the first code cell of every notebook (a test checks they agree).
sync-setup-cell:
	$(PY) tests/sync_setup_cell.py

clean:
	rm -rf data/corpus data/cache data/nltk_data .pytest_cache .hypothesis build/screenshots
