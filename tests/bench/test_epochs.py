"""`--epochs N`: an epoch budget beside the step budget, and what a sampler that shortens epochs does
to Lightning's step estimate."""

import re

import pytest
import torch
from bench_techniques import EMPTY
from click.testing import CliRunner
from torch.utils.data import DataLoader, Sampler, TensorDataset

from lightning_eff.bench import format_table, run_bench
from lightning_eff.bench import harness as harness_module
from lightning_eff.bench.checks import schedule_shortfall
from lightning_eff.bench.command import bench
from lightning_eff.bench.epochs import check_every
from lightning_eff.bench.harness import epoch_evals
from lightning_eff.bench.html import render_html
from lightning_eff.bench.tasks.base import BenchModule, warmup_cosine_factor
from lightning_eff.errors import ConfigError
from lightning_eff.testing import TinyClassifier, TinyDataModule

EPOCHS = 2
BATCHES = TinyDataModule().steps_per_epoch  # 64 samples / 8


class HalfAfterFirstEpoch(Sampler[int]):
    """All samples in epoch 0, half of them afterwards (as InfoBatch prunes well-learned samples)."""

    def __init__(self, length: int) -> None:
        self.length, self.epoch = length, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _indices(self) -> list[int]:
        g = torch.Generator().manual_seed(self.epoch)
        order = torch.randperm(self.length, generator=g).tolist()
        return order if self.epoch == 0 else order[: self.length // 2]

    def __iter__(self):
        return iter(self._indices())

    def __len__(self) -> int:
        return len(self._indices())


class ShrinkingData(TinyDataModule):
    def train_dataloader(self) -> DataLoader:
        data = TensorDataset(self.x, self.y)
        return DataLoader(data, batch_size=self.batch_size, sampler=HalfAfterFirstEpoch(len(data)), drop_last=True)


TINY = {"model": "lightning_eff.testing:TinyClassifier", "metric": "val/loss", "higher_is_better": False}


def test_epoch_evals_are_at_least_one_per_epoch():
    assert epoch_evals(3, 10) == 4 and epoch_evals(10, 3) == 1 and epoch_evals(2, 2) == 1
    with pytest.raises(ConfigError, match="at least 1"):
        epoch_evals(0, 10)


def test_an_epoch_budget_trains_whole_epochs_and_the_report_says_so():
    result = run_bench(data="lightning_eff.testing:TinyDataModule", **TINY, recipe=EMPTY, repeats=1, epochs=EPOCHS,
                       evals=EPOCHS, warmup_steps=0, quiet=True, flops="off")
    assert result.task.budget == "epochs" and result.task.max_epochs == EPOCHS and result.task.max_steps is None
    for run in result.runs:
        assert run.steps == EPOCHS * BATCHES == run.estimated_steps and run.epochs == EPOCHS
        assert [p.step for p in run.curve] == [0, BATCHES, 2 * BATCHES]  # evaluated at each epoch's end
    assert f"{EPOCHS} epochs" in format_table(result).splitlines()[0]
    assert "--epochs 2" in result.environment.command and "--max-steps" not in result.environment.command
    assert f"budget: {EPOCHS} epochs (max_epochs, max_steps=-1), evaluated 1x per epoch" in render_html(result, [])
    assert not any("estimate" in w for w in result.warnings)


@pytest.mark.parametrize(("per_epoch", "steps"), [(1, [0, 8, 12]), (2, [0, 4, 8, 10, 12])])
def test_a_shortened_epoch_is_evaluated_at_its_own_fractions_and_end(per_epoch, steps):
    # Lightning alone plans evaluations for the full epoch's length and skips a shorter epoch's end.
    result = run_bench(data="test_epochs:ShrinkingData", **TINY, recipe=EMPTY, repeats=1, epochs=EPOCHS,
                       evals=EPOCHS * per_epoch, warmup_steps=0, quiet=True, flops="off")
    assert [p.step for p in result.runs[0].curve] == steps


def test_epoch_fractions_are_whole_batches():
    assert check_every(8, 1) == 8 and check_every(4, 2) == 2 and check_every(5, 2) == 3 and check_every(1, 4) == 1


def test_a_sampler_that_shortens_epochs_leaves_lightnings_estimate_too_high_and_warns():
    result = run_bench(data="test_epochs:ShrinkingData", **TINY, recipe=EMPTY, repeats=1, epochs=EPOCHS, evals=EPOCHS,
                       warmup_steps=0, quiet=True, flops="off")
    run = result.runs[0]
    assert run.steps == BATCHES + BATCHES // 2 and run.estimated_steps == EPOCHS * BATCHES
    assert schedule_shortfall(run) == pytest.approx(0.25)
    warning = next(w for w in result.warnings if "estimated_stepping_batches" in w)
    assert re.search(rf"the baseline arm trained fewer steps .* {run.steps} of trainer.estimated_stepping_batches = {EPOCHS * BATCHES}, 25% short", warning)


class DecayingTinyClassifier(TinyClassifier):
    """TinyClassifier under the embedded tasks' schedule (AdamW, cosine to 0 over the epochs)."""

    lr, weight_decay, warmup_fraction = 0.01, 0.0, 0.0
    configure_optimizers = BenchModule.configure_optimizers


def test_the_tasks_schedule_decays_to_zero_over_shortened_epochs_and_nothing_is_warned():
    result = run_bench(data="test_epochs:ShrinkingData", **{**TINY, "model": "test_epochs:DecayingTinyClassifier"},
                       recipe=EMPTY, repeats=1, epochs=EPOCHS, evals=EPOCHS, warmup_steps=0, quiet=True, flops="off")
    run = result.runs[0]
    assert run.steps == BATCHES + BATCHES // 2 and run.estimated_steps == EPOCHS * BATCHES
    # The last step runs at the rate set after the epoch's third of four half-size batches: position
    # 8 + 3 * 8 / 4 = 14 of 16, as in a full epoch's 14th step; the step after it would be at 0.
    assert run.final_lr_fraction == pytest.approx(warmup_cosine_factor(14, EPOCHS * BATCHES, 0))
    assert not any("estimated_stepping_batches" in w for w in result.warnings)


def fail_if_training_starts(*args, **kwargs):
    raise AssertionError("training started although the input was invalid")


@pytest.mark.parametrize("other", [["--max-steps", "10"], ["--budget", "10"]])
def test_epochs_with_a_step_budget_is_a_usage_error(monkeypatch, other):
    monkeypatch.setattr(harness_module, "run_once", fail_if_training_starts)
    result = CliRunner().invoke(bench, ["--epochs", "2", *other])
    assert result.exit_code == 2 and "are two budgets: give one" in result.output


def test_run_bench_refuses_both_budgets_and_recipe_steps_with_epochs(monkeypatch):
    monkeypatch.setattr(harness_module, "run_once", fail_if_training_starts)
    with pytest.raises(ConfigError, match="not both"):
        run_bench("vision", EMPTY, max_steps=10, epochs=2)
    with pytest.raises(ConfigError, match="recipe_steps is a multiple of a steps budget"):
        run_bench("vision", EMPTY, epochs=2, recipe_steps=2.0)
