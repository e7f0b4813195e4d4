"""LoRA resumes exactly and keeps DDP ranks identical."""

from __future__ import annotations

import pytest
from lora_helpers import dora_techniques, lora_techniques, no_dropout_techniques, small_data

from lightning_eff.testing import (
    TinyClassifier,
    TinyDataModule,
    assert_ranks_identical,
    assert_resume_equivalent,
    run_ddp,
)


def test_resume_equals_the_uninterrupted_run(tmp_path):
    states = assert_resume_equivalent(TinyClassifier, small_data, no_dropout_techniques, half_steps=4, tmp_path=tmp_path)
    assert list(states.values()) == [{"adapted": ["blocks.0.0", "blocks.1.0", "blocks.2.0"]}]


def test_resume_with_dora_and_rslora_equals_the_uninterrupted_run(tmp_path):
    assert_resume_equivalent(TinyClassifier, small_data, dora_techniques, half_steps=2, tmp_path=tmp_path)


@pytest.mark.ddp
def test_ddp_ranks_stay_identical_without_unused_parameter_search(tmp_path):
    states = run_ddp(TinyClassifier, TinyDataModule, lora_techniques, max_steps=4, tmp_path=tmp_path)
    assert_ranks_identical(states)
    assert any("lora_A.default" in k for k in states[0]["weights"])
