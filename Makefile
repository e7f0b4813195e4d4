# The README's two commands: `make demo` (the main job) and `make test`. Both set up .venv first,
# with the tested versions in constraints.txt (the lock); pyproject.toml keeps the allowed ranges.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
# The CPU build of torch is pinned so pip never pulls the multi-GB CUDA build on a CPU machine.
TORCH_PIN ?= torch==2.13.0
EXTRAS := dev,hf,wandb,data,tasks,precision,peft
LOCK := constraints.txt
STAMP := $(VENV)/.installed
ENV := WANDB_MODE=disabled HF_HUB_OFFLINE=1

.PHONY: install demo test bench-overhead bench-cli lint wheel lock upgrade-check clean

$(STAMP): pyproject.toml setup.py $(LOCK)
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "need $(PYTHON) on PATH (or: make PYTHON=python3 ...)"; exit 1; }
	@echo "==> [1/3] virtual environment $(VENV) ($$($(PYTHON) --version))"
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(BIN)/python -m pip install -q --upgrade pip
	@echo "==> [2/3] $(TORCH_PIN) (CPU build)"
	@$(BIN)/python -m pip install -q "$(TORCH_PIN)"
	@echo "==> [3/3] lightning-eff (editable) with extras [$(EXTRAS)], versions locked by $(LOCK): about 2-4 minutes"
	@# setuptools warns that folders named like the package may shadow it: lightning_eff/_shadow_guard.py handles that
	@PYTHONWARNINGS="ignore:Editable installation" $(BIN)/python -m pip install -q -c $(LOCK) -e ".[$(EXTRAS)]" "$(TORCH_PIN)"
	@touch $(STAMP)
	@echo "==> installed: $$($(BIN)/python -m pip list 2>/dev/null | grep -ciE '^[a-z0-9]') packages; lightning-eff $$($(BIN)/python -c 'import lightning_eff; print(lightning_eff.__version__)')"

install: $(STAMP)

# The strongest recipe on the task it suits: selective fine-tuning of a pretrained MiniLM with its frozen
# bottom cached, twice the baseline's (cheaper) steps. FLOPs are counted inside the timed runs: on this
# task that costs both arms 1.1-1.15x (docs/benchmarking.md, "Compute") and saves an untimed second pass
# of every run (about 4 minutes instead of 7).
demo: $(STAMP)
	WANDB_MODE=offline HF_HUB_OFFLINE=1 $(BIN)/lightning-eff bench --task finetune --recipe quickstart --evals 8 --recipe-steps 2 --flops inline --out bench-out/demo

test: $(STAMP)
	$(ENV) $(BIN)/python -m pytest -n 2 -q tests

bench-overhead: $(STAMP)
	$(BIN)/python benchmarks/hub_overhead.py

bench-cli: $(STAMP)
	$(BIN)/python benchmarks/cli_startup.py

lint: $(STAMP)
	$(BIN)/ruff check lightning_eff plugins kernels tests benchmarks

# A wheel of lightning-eff (dist/), for installing outside the checkout: pip install dist/lightning_eff-*.whl
wheel: $(STAMP)
	$(BIN)/python -m pip wheel -q --no-deps --no-build-isolation -w dist .
	@ls dist/*.whl

# Move the lock on purpose: freeze what .venv has now (run after upgrade-check passed).
lock: $(STAMP)
	@{ sed -n '1,/^# torch is/p' $(LOCK); $(BIN)/python -m pip freeze --exclude-editable | grep -v '^lightning-eff' | sed 's/^torch==\([0-9.]*\)+cpu$$/torch==\1/'; } > $(LOCK).new
	@mv $(LOCK).new $(LOCK) && echo "wrote $(LOCK)"

# The newest versions pyproject.toml allows (torch stays the pinned CPU build), in a separate venv:
# what moved against the lock, then the test suite. The lock is not touched.
upgrade-check:
	@rm -rf .venv-upgrade && $(PYTHON) -m venv .venv-upgrade
	@.venv-upgrade/bin/python -m pip install -q --upgrade pip
	@echo "==> installing the newest allowed versions into .venv-upgrade"
	@.venv-upgrade/bin/python -m pip install -q --upgrade --upgrade-strategy eager -e ".[$(EXTRAS)]" "$(TORCH_PIN)"
	@.venv-upgrade/bin/python benchmarks/lock_drift.py $(LOCK)
	$(ENV) .venv-upgrade/bin/python -m pytest -n 2 -q tests

clean:
	rm -rf $(VENV) .venv-upgrade build dist *.egg-info bench-out
