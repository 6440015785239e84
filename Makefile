# consparse: `make train` and `make test` work on a fresh machine (they create .venv first).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed
# torch is pinned and installed first so that pip takes the local build instead of fetching another.
TORCH_PINS ?= torch==2.14.1 torchvision==0.29.1
ARGS   ?=

.PHONY: setup train test test-fast bench gpu-check report clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet $(TORCH_PINS)
	$(PIP) install --quiet -e ".[dev,slurm]"
	touch $(STAMP)

# The main job on the embedded default dataset (scikit-learn digits, no files needed).
train: setup
	$(PY) train.py $(ARGS)

# The whole test suite (slow and real-data checks included; real-data tests skip without ../shared/data).
test: setup
	WANDB_MODE=disabled $(PY) -m pytest $(ARGS)

# Only the fast tests.
test-fast: setup
	WANDB_MODE=disabled $(PY) -m pytest -m "not slow and not realdata and not ddp" $(ARGS)

# Speed measurements (ratios against a baseline measured in the same run): every script in
# benchmarks/, or one: make bench BENCHMARKS=benchmarks/train_overhead.py ARGS="--dataset mnist ..."
BENCHMARKS ?= $(sort $(wildcard benchmarks/*.py))
bench: setup
	@for script in $(BENCHMARKS); do echo "== $$script"; $(PY) $$script $(ARGS) || exit 1; done

# One short run on one GPU (at most a few minutes): the platform's epoch time against a bare loop,
# FLOP/s, WRN-28-10 steps, the LASSO rows/s, and pytest -m gpu; all of it in $(GPU_CHECK_OUT)/gpu_check.json.
# Without a GPU the same code runs at a tiny size on the CPU. On a machine without the venv:
#   python3 benchmarks/gpu_check.py --out outputs/gpu_check
GPU_CHECK_OUT ?= outputs/gpu_check
gpu-check: setup
	WANDB_MODE=disabled $(PY) benchmarks/gpu_check.py --out $(GPU_CHECK_OUT) $(ARGS)

# Tables and plots of a sweep: make report DIR=outputs/multiruns/<date>/<time>
report: setup
	$(PY) -m consparse.report $(DIR)

clean:
	rm -rf outputs multirun .pytest_cache
