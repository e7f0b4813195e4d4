"""Exact resume (2N steps == N + checkpoint + resume + N) and identical ranks under DDP (2 CPU processes)."""

import pytest
from distill_helpers import TEACHER_CLASS, student

from lightning_eff.plugins.distillation import FeatureDistillation, KnowledgeDistillation
from lightning_eff.testing import TinyDataModule, assert_ranks_identical, assert_resume_equivalent, run_ddp


def knowledge():
    return [KnowledgeDistillation(teacher=TEACHER_CLASS, alpha=0.5, temperature=2.0, end=0.75, decay="linear")]


def features():
    return [FeatureDistillation(student_layers=["blocks.*.0"], teacher_layers=["blocks.*.0"], teacher=TEACHER_CLASS)]


def both():
    return knowledge() + features()


@pytest.mark.parametrize("techniques", [knowledge, features], ids=["knowledge", "features"])
def test_resume_is_exact(techniques, tmp_path):
    states = assert_resume_equivalent(student, TinyDataModule, techniques, half_steps=TinyDataModule().steps_per_epoch, tmp_path=tmp_path)
    (state,) = states.values()
    assert state["teacher_forwards"] == (12 if techniques is knowledge else 16)  # end=0.75 of 16 steps


@pytest.mark.ddp
def test_ranks_stay_identical_under_ddp(tmp_path):
    states = run_ddp(student, TinyDataModule, both, max_steps=4, tmp_path=tmp_path)
    assert_ranks_identical(states)
    assert any(k.startswith("distillation_projections.") for k in states[0]["weights"])
