import example_techniques as ex
import pytest
import torch

from lightning_eff.testing import (
    TinyClassifier,
    TinyDataModule,
    assert_ranks_identical,
    assert_resume_equivalent,
    run_ddp,
    state_differences,
)


def weight_noise():
    return [ex.WeightNoise(scale=0.01, every=3)]


class ForgetfulNoise(ex.WeightNoise):
    """Like WeightNoise but does not checkpoint its generator: a resume must diverge."""

    name = "forgetful_noise"

    def state_dict(self):
        return {"applied": self.applied}

    def load_state_dict(self, state_dict):
        self.applied = state_dict["applied"]


def forgetful_noise():
    return [ForgetfulNoise(scale=0.01, every=1)]


def test_stateful_technique_resumes_exactly(tmp_path):
    states = assert_resume_equivalent(TinyClassifier, TinyDataModule, weight_noise, half_steps=8, tmp_path=tmp_path)
    (state,) = states.values()
    assert state["applied"] == 5  # after steps 3, 6, 9, 12, 15: counted across the resume


def test_resume_harness_catches_state_that_is_not_checkpointed(tmp_path):
    with pytest.raises(AssertionError, match="resumed run differs"):
        assert_resume_equivalent(TinyClassifier, TinyDataModule, forgetful_noise, half_steps=8, tmp_path=tmp_path)


def test_state_differences_reports_paths():
    a = {"w": torch.zeros(2), "n": 1, "l": [1, 2]}
    b = {"w": torch.ones(2), "n": 1, "l": [1, 3], "extra": 0}
    diffs = state_differences(a, b, "s")
    assert any(d.startswith("s.w: values differ") for d in diffs)
    assert "s.l[1]: 2 vs 3" in diffs
    assert "s.extra: missing on one side" in diffs


@pytest.mark.ddp
def test_two_process_ddp_keeps_technique_state_identical_across_ranks(tmp_path):
    states = run_ddp(TinyClassifier, TinyDataModule, weight_noise, max_steps=4, tmp_path=tmp_path)
    assert_ranks_identical(states)
    assert states[0]["global_step"] == 4
    (state,) = states[0]["techniques"].values()
    assert state["applied"] == 1
