"""The math of distillation, checked against hand computations."""

import math

import pytest
import torch

from lightning_eff.plugins.distillation.losses import distillation_weight, feature_loss, kd_loss, mixed_loss


def test_kd_loss_is_the_kl_at_temperature_t_scaled_by_t_squared():
    student = torch.tensor([[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]])
    teacher = torch.tensor([[2.0, 0.0, 1.0], [1.0, 1.0, 1.0]])
    t = 3.0
    expected = 0.0
    for s_row, t_row in zip(student.tolist(), teacher.tolist()):
        zs = sum(math.exp(v / t) for v in s_row)
        zt = sum(math.exp(v / t) for v in t_row)
        p = [math.exp(v / t) / zt for v in t_row]
        q = [math.exp(v / t) / zs for v in s_row]
        expected += sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))
    expected = expected / 2 * t**2
    assert kd_loss(student, teacher, t).item() == pytest.approx(expected, rel=1e-5)


def test_kd_loss_is_zero_when_student_matches_teacher_and_positive_otherwise():
    logits = torch.randn(5, 7)
    assert kd_loss(logits, logits.clone(), 2.0).item() == pytest.approx(0.0, abs=1e-6)
    assert kd_loss(torch.randn(5, 7), logits, 2.0).item() > 0


def test_kd_loss_averages_over_every_position_of_sequence_logits():
    student, teacher = torch.randn(2, 3, 5), torch.randn(2, 3, 5)
    flat = kd_loss(student.reshape(6, 5), teacher.reshape(6, 5), 1.5)
    assert kd_loss(student, teacher, 1.5).item() == pytest.approx(flat.item())


def test_kd_loss_sends_no_gradient_to_the_teacher():
    student = torch.randn(4, 3, requires_grad=True)
    teacher = torch.randn(4, 3, requires_grad=True)
    kd_loss(student, teacher, 2.0).backward()
    assert student.grad is not None and teacher.grad is None


def test_kd_loss_refuses_mismatched_shapes():
    with pytest.raises(ValueError, match="differ"):
        kd_loss(torch.randn(4, 3), torch.randn(4, 5), 1.0)


def test_feature_loss_is_one_for_a_zero_student_and_scale_free():
    teacher = torch.randn(8, 4, 3, 3)
    assert feature_loss(torch.zeros_like(teacher), teacher).item() == pytest.approx(1.0, rel=1e-5)
    student = torch.randn(8, 4, 3, 3)
    assert feature_loss(100 * student, 100 * teacher).item() == pytest.approx(feature_loss(student, teacher).item(), rel=1e-4)


def test_feature_loss_is_the_relative_squared_error_by_hand():
    s, t = torch.tensor([[1.0, 0.0], [0.0, 2.0]]), torch.tensor([[1.0, 1.0], [2.0, 0.0]])
    # per sample ||s-t||^2: 1, 8 -> mean 4.5; ||t||^2: 2, 4 -> mean 3
    assert feature_loss(s, t).item() == pytest.approx(4.5 / 3, rel=1e-5)


def test_weight_is_alpha_inside_the_window_and_zero_outside():
    assert distillation_weight(0, 0.7, 2, 10) == 0.0
    assert distillation_weight(2, 0.7, 2, 10) == 0.7
    assert distillation_weight(9, 0.7, 2, 10) == 0.7
    assert distillation_weight(10, 0.7, 2, 10) == 0.0


def test_linear_decay_reaches_zero_at_the_end_of_the_window():
    assert distillation_weight(0, 0.8, 0, 10, "linear") == pytest.approx(0.8)
    assert distillation_weight(5, 0.8, 0, 10, "linear") == pytest.approx(0.4)
    assert distillation_weight(10, 0.8, 0, 10, "linear") == 0.0
    assert distillation_weight(5, 0.8, 0, 10, "cosine") == pytest.approx(0.4)


def test_mixed_loss_is_hintons_convex_combination():
    assert mixed_loss(torch.tensor(2.0), torch.tensor(4.0), 0.25).item() == pytest.approx(2.5)
