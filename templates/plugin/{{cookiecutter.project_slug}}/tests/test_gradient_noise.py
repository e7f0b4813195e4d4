"""GradientNoise: the schedule, the noise, exact resume, identical DDP ranks, preflight."""

import pytest
import torch
from lightning_eff.testing import (
    TinyClassifier,
    TinyDataModule,
    assert_ranks_identical,
    assert_resume_equivalent,
    preflight_problems,
    run_ddp,
)

from {{ cookiecutter.package_name }}.gradient_noise import GradientNoise, add_gradient_noise, noise_std_at


def techniques():  # module level: run_ddp pickles it into the worker processes
    return [GradientNoise(eta=0.3)]


def test_noise_variance_decays_as_eta_over_one_plus_step_to_the_gamma():
    assert noise_std_at(0, eta=0.01, gamma=0.55) == pytest.approx(0.1)
    assert noise_std_at(99, eta=0.3, gamma=0.55) == pytest.approx((0.3 / 100**0.55) ** 0.5)
    stds = [noise_std_at(t, 1.0, 0.55) for t in range(50)]
    assert all(a > b for a, b in zip(stds, stds[1:]))


def test_noise_goes_only_to_parameters_that_have_a_gradient():
    with_grad, without = torch.nn.Parameter(torch.zeros(1000)), torch.nn.Parameter(torch.zeros(3))
    with_grad.grad = torch.zeros(1000)
    assert add_gradient_noise([with_grad, without], std=0.5, generator=torch.Generator().manual_seed(0)) == 1
    assert without.grad is None
    assert with_grad.grad.std().item() == pytest.approx(0.5, rel=0.1)


def test_training_resumes_exactly(tmp_path):
    states = assert_resume_equivalent(TinyClassifier, TinyDataModule, techniques, half_steps=8, tmp_path=tmp_path)
    (state,) = states.values()
    assert state["noisy_steps"] == 16


def test_a_pattern_that_matches_no_parameter_is_refused_before_training():
    (problem,) = preflight_problems([GradientNoise(parameters=["decoder.*"])])
    assert "matches no trainable parameter of TinyClassifier" in problem and "'blocks', 'head'" in problem


@pytest.mark.ddp
def test_ranks_add_the_same_noise_and_stay_identical(tmp_path):
    assert_ranks_identical(run_ddp(TinyClassifier, TinyDataModule, techniques, max_steps=4, tmp_path=tmp_path))
