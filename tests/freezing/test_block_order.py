"""Block order: `blocks=[...]` patterns give the freezing order; a discovered order that starts at
the output head is refused; the plan printed at fit start lists the blocks in freezing order."""

import logging

import pytest
from freezing_helpers import fit
from torch import nn

from lightning_eff.plugins.freezing import ProgressiveFreezing, SelectiveFinetuning
from lightning_eff.plugins.freezing.blocks import block_problems, find_blocks
from lightning_eff.testing import TinyClassifier, preflight_problems

BODY = ["blocks.0", "blocks.1", "blocks.2"]


class HeadFirstClassifier(TinyClassifier):
    """TinyClassifier whose __init__ registers the head before the body (forward is unchanged)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.blocks = self._modules.pop("blocks")  # re-registered after the head


class UnnamedHeadFirstClassifier(TinyClassifier):
    """Head registered first under a neutral name: recognisable only as a Linear to `classes` outputs."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.out = self._modules.pop("head")
        self.blocks = self._modules.pop("blocks")

    def forward(self, x):
        return self.out(self.blocks(x))


def test_patterns_give_the_block_order_not_registration_order():
    blocks = find_blocks(HeadFirstClassifier(), ["blocks.*", "head"])
    assert list(blocks.names) == [*BODY, "head"]
    assert block_problems(HeadFirstClassifier(), blocks) == []


def test_training_freezes_in_the_order_of_the_patterns():
    technique = ProgressiveFreezing(start=0.0, end=0.5, level=0.5, blocks=["blocks.*", "head"])
    _, module = fit([technique], steps=16, module_cls=HeadFirstClassifier)
    frozen = {n.rsplit(".", 1)[0] for n, p in module.named_parameters() if not p.requires_grad}
    assert frozen == {"blocks.0.0", "blocks.1.0"}  # half of the 4 blocks, input side first; not the head


@pytest.mark.parametrize(
    "module_cls, block, reason",
    [(HeadFirstClassifier, "head", "is named 'head'"), (UnnamedHeadFirstClassifier, "out", "4 outputs, the model's classes")],
)
def test_a_discovered_order_starting_at_the_head_is_refused_naming_the_blocks_option(module_cls, block, reason):
    problems = preflight_problems([ProgressiveFreezing()], module=module_cls(), max_steps=100)
    (problem,) = problems
    assert f"the first block found, {block!r}" in problem and reason in problem
    assert f"blocks={[*BODY, block]!r}" in problem


def test_selection_by_name_does_not_depend_on_block_order():
    assert preflight_problems([SelectiveFinetuning(train=["head.*"])], module=HeadFirstClassifier()) == []
    problems = preflight_problems([SelectiveFinetuning(train_last_blocks=1)], module=HeadFirstClassifier())
    assert len(problems) == 1 and "blocks=" in problems[0]


def test_a_pattern_around_an_earlier_block_is_a_problem():
    model = TinyClassifier()
    blocks = find_blocks(model, ["blocks.0.0", "blocks.*", "head"])
    (problem,) = block_problems(model, blocks)
    assert "'blocks.*' matches 'blocks.0', which holds the block 'blocks.0.0'" in problem


def test_the_plan_lists_the_blocks_in_freezing_order(caplog):
    technique = ProgressiveFreezing(blocks=["blocks.*", "head"])
    with caplog.at_level(logging.INFO):
        fit([technique], steps=4, module_cls=HeadFirstClassifier)
    plan = next(r.getMessage() for r in caplog.records if "lightning-eff plan" in r.getMessage())
    assert "blocks in freezing order: blocks.0, blocks.1, blocks.2, head" in " ".join(plan.split())  # wrapped


def test_a_forward_ordered_model_is_not_refused():
    assert preflight_problems([ProgressiveFreezing()], module=TinyClassifier(), max_steps=100) == []
    assert isinstance(find_blocks(TinyClassifier()).modules[-1], nn.Linear)
