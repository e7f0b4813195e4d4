# The README's two commands: `make demo` (the main job) and `make test`. Both set up .venv first.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
# The CPU build of torch is pinned so pip never pulls the multi-GB CUDA build on a CPU machine.
TORCH_PIN ?= torch==2.13.0
STAMP := $(VENV)/.installed

.PHONY: install demo test bench-overhead lint clean

$(STAMP): pyproject.toml setup.py
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "need $(PYTHON) on PATH (or: make PYTHON=python3 ...)"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH_PIN)"
	$(BIN)/python -m pip install -q -e ".[dev,hf,wandb,data,tasks,precision]" "$(TORCH_PIN)"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	WANDB_MODE=offline HF_HUB_OFFLINE=1 $(BIN)/lightning-eff bench --task vision --recipe quickstart --out bench-out/demo

test: $(STAMP)
	WANDB_MODE=disabled HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -n 2 -q tests

bench-overhead: $(STAMP)
	$(BIN)/python benchmarks/hub_overhead.py

lint: $(STAMP)
	$(BIN)/ruff check lightning_eff plugins kernels tests benchmarks

clean:
	rm -rf $(VENV) build dist *.egg-info bench-out
