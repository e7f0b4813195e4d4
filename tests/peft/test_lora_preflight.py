"""Problems LoRA finds before step 0, each a sentence naming the fix."""

from __future__ import annotations

import sys
import types

import pytest
from lora_helpers import lora_on_blocks

from lightning_eff.errors import MissingDependencyError
from lightning_eff.plugins.peft.adapters import require_peft
from lightning_eff.testing import preflight_problems


def test_a_target_pattern_matching_no_linear_layer_is_refused_with_real_names():
    problems = preflight_problems([lora_on_blocks(targets=["blocks.*", "encoder.*"])])
    assert len(problems) == 1
    assert "targets 'encoder.*'" in problems[0] and "matched no module" in problems[0] and "'blocks.0.0'" in problems[0]


def test_a_train_pattern_matching_no_parameter_is_refused():
    problems = preflight_problems([lora_on_blocks(train=["classifier.*"])])
    assert problems == [
        "lora: train pattern 'classifier.*' matches no parameter; names look like 'blocks.0.0.weight', "
        "'blocks.0.0.bias', 'blocks.1.0.weight', 'blocks.1.0.bias'"
    ]


def test_merged_path_without_merge_at_end_is_refused(tmp_path):
    problems = preflight_problems([lora_on_blocks(merged_path=str(tmp_path / "m.pt"))])
    assert problems and "set merge_at_end=true" in problems[0]


def _hide_peft(monkeypatch, namespace_dir=None):
    for name in [m for m in sys.modules if m == "peft" or m.startswith("peft.")]:
        monkeypatch.delitem(sys.modules, name)
    if namespace_dir is None:
        monkeypatch.setitem(sys.modules, "peft", None)  # import peft -> ImportError
    else:  # what an uninstalled peft looks like with tests/ on sys.path: the folder tests/peft
        ns = types.ModuleType("peft")
        ns.__path__ = [str(namespace_dir)]
        monkeypatch.setitem(sys.modules, "peft", ns)


def test_missing_peft_is_one_preflight_problem_naming_the_extra(monkeypatch):
    technique = lora_on_blocks()
    _hide_peft(monkeypatch)
    problems = preflight_problems([technique])
    assert problems == [
        "lora: the 'lora' technique needs the optional package 'peft': pip install 'lightning-eff[peft]'"
    ]


def test_a_namespace_folder_named_peft_is_not_taken_for_the_library(monkeypatch, tmp_path):
    (tmp_path / "peft").mkdir()
    _hide_peft(monkeypatch, tmp_path / "peft")
    with pytest.raises(MissingDependencyError, match=r"pip install 'lightning-eff\[peft\]'"):
        require_peft()


@pytest.mark.parametrize(
    "other, reason",
    [
        ("selective_finetuning", "train=['classifier.*']"),
        ("progressive_freezing", "adapters only in the later layers"),
        ("gradual_pruning", "prune (and fine-tune) first"),
        ("moe_upcycling", "upcycle and train first"),
    ],
)
def test_techniques_lora_refuses_are_named_with_the_reason(other, reason):
    from lightning_eff.registry import get_registry

    technique = get_registry().techniques[other]()
    problems = preflight_problems([lora_on_blocks(), technique])
    assert f"lora conflicts with {other}: remove one of them" in problems
    assert any(p.startswith("lora: ") and reason in p for p in problems), problems
