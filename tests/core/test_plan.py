from typing import ClassVar

import lightning.pytorch as pl
from example_techniques import HalfBatch, OtherSelector, WeightNoise

from lightning_eff import Technique
from lightning_eff.plan import resolve_order
from lightning_eff.testing import TinyClassifier, preflight_problems


def names(order):
    return [t.name for t in order]


def make(name_, phase_="optimizer", before_=(), after_=(), requires_=(), conflicts_=()):
    class T(Technique):
        name = name_
        phase = phase_
        before: ClassVar = tuple(before_)
        after: ClassVar = tuple(after_)
        requires: ClassVar = tuple(requires_)
        conflicts: ClassVar = tuple(conflicts_)

    T.__doc__ = f"test technique {name_}"
    return T()


def test_phases_order_techniques_when_nothing_else_is_declared():
    order, problems = resolve_order([make("p", "precision"), make("o"), make("s", "surgery"), make("d", "data")])
    assert problems == []
    assert names(order) == ["s", "d", "o", "p"]


def test_user_order_breaks_ties_within_a_phase():
    order, _ = resolve_order([make("b"), make("a"), make("c")])
    assert names(order) == ["b", "a", "c"]


def test_before_and_after_override_phases():
    order, problems = resolve_order([make("s", "surgery", after_=("p",)), make("p", "precision")])
    assert problems == []
    assert names(order) == ["p", "s"]
    order, _ = resolve_order([make("x", before_=("y",)), make("y", "surgery")])
    assert names(order) == ["x", "y"]


def test_ordering_names_of_inactive_techniques_are_ignored():
    order, problems = resolve_order([make("a", before_=("not_here",))])
    assert problems == [] and names(order) == ["a"]


def test_a_cycle_is_reported_with_its_members():
    _, problems = resolve_order([make("a", before_=("b",)), make("b", before_=("a",)), make("c")])
    assert len(problems) == 1
    assert "ordering cycle between a, b" in problems[0]


def test_conflicts_are_reported_once_per_pair():
    _, problems = resolve_order([make("a", conflicts_=("b",)), make("b", conflicts_=("a",))])
    assert problems == ["a conflicts with b: remove one of them"]


def test_missing_requirement_names_the_fix():
    _, problems = resolve_order([make("a", requires_=("b",))])
    assert problems == ["a requires technique 'b': add it to the recipe or the Trainer's callbacks"]


def test_the_same_technique_twice_with_the_same_options_is_refused():
    _, problems = resolve_order([WeightNoise(), WeightNoise()])
    assert any("added twice" in p for p in problems)
    _, problems = resolve_order([WeightNoise(scale=0.1), WeightNoise(scale=0.2)])
    assert problems == []


def test_preflight_reports_every_problem_together_before_step_0():
    problems = preflight_problems(
        [HalfBatch(), OtherSelector(), make("a", requires_=("missing",))],
        module=_PlainClassifier(),
    )
    assert len(problems) == 4, problems
    assert any("two batch selectors are active (half_batch, other_selector)" in p for p in problems)
    assert sum("needs the LightningModule to mix in lightning_eff.EfficientModule" in p for p in problems) == 2
    assert any("requires technique 'missing'" in p for p in problems)


def test_preflight_passes_a_valid_plan():
    assert preflight_problems([HalfBatch(), WeightNoise()]) == []


def test_technique_validate_problems_are_prefixed_with_its_name():
    class Picky(Technique):
        """Refuses every Trainer."""

        name = "picky"

        def validate(self, trainer, pl_module):
            return ["set max_steps below 10"]

    assert preflight_problems([Picky()]) == ["picky: set max_steps below 10"]


def test_ddp_without_unused_parameter_detection_is_refused_for_techniques_that_stop_gradients():
    class Freezer(Technique):
        """Stops gradients."""

        name = "freezer"
        find_unused_parameters = True

    problems = preflight_problems([Freezer()], strategy="ddp", devices=1)
    assert problems and "ddp_find_unused_parameters_true" in problems[0]
    assert preflight_problems([Freezer()], strategy="ddp_find_unused_parameters_true", devices=1) == []


def test_unsupported_strategy_is_named():
    class SingleOnly(Technique):
        """Single device only."""

        name = "single_only"
        supported_strategies = ("single_device",)

    problems = preflight_problems([SingleOnly()], strategy="ddp", devices=1)
    assert problems == ["single_only does not support strategy 'ddp'; use one of ['single_device']"]


class _PlainClassifier(pl.LightningModule):
    """TinyClassifier's LightningModule part only: no EfficientModule mixin."""

    def __init__(self):
        super().__init__()
        self.net = TinyClassifier()

    def training_step(self, batch, batch_idx):
        return self.net.per_sample_loss(batch).mean()

    def configure_optimizers(self):
        return self.net.configure_optimizers()


def test_the_printed_plan_wraps_long_option_lists():
    from lightning_eff.plan import PLAN_WIDTH, describe_plan
    from lightning_eff.plugins.freezing import SelectiveFinetuning
    from lightning_eff.plugins.pruning import GradualPruning

    order = [GradualPruning(final_sparsity=0.8, exclude_names=["head", "embed"]), SelectiveFinetuning(train_last_blocks=4)]
    text = describe_plan(order)
    assert max(len(line) for line in text.splitlines()) <= PLAN_WIDTH
    assert "  1. gradual_pruning (phase:" in text and "  2. selective_finetuning (phase:" in text
    assert repr(order[0]) == " ".join(text.split("  2. ")[0].split("\n", 2)[2].split())  # nothing lost
