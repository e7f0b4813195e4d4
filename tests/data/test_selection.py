"""The selection math, without a Trainer."""

import pytest
import torch

from lightning_eff.plugins.data.selection import (
    at_least_threshold,
    kept_count,
    loss_rank_probabilities,
    random_subset,
    select_by_loss,
    top_reducible,
)
from lightning_eff.plugins.data.window import ActiveWindow


def test_rank_probabilities_rise_with_loss_rank_and_sum_to_one():
    p = loss_rank_probabilities(10, keep=0.3)
    assert torch.all(p[1:] > p[:-1])
    assert p.sum().item() == pytest.approx(1.0)


def test_rank_probabilities_follow_the_percentile_power_law():
    p = loss_rank_probabilities(4, keep=0.5)  # exponent 1/keep - 1 = 1: proportional to the percentile
    q = torch.tensor([0.125, 0.375, 0.625, 0.875], dtype=torch.float64)
    assert torch.allclose(p, q / q.sum())


def test_select_by_loss_keeps_the_requested_count_in_batch_order():
    losses = torch.rand(32, generator=torch.Generator().manual_seed(1))
    idx = select_by_loss(losses, 0.25, torch.Generator().manual_seed(0))
    assert idx.numel() == 8 and idx.unique().numel() == 8
    assert torch.equal(idx, idx.sort().values)


def test_select_by_loss_prefers_high_losses():
    losses = torch.arange(100, dtype=torch.float32)
    g = torch.Generator().manual_seed(0)
    picks = torch.cat([select_by_loss(losses, 0.2, g) for _ in range(200)])
    # rank-power sampling with keep=0.2 puts ~94% of the mass on the top half
    assert (picks >= 50).float().mean() > 0.85
    uniform = torch.cat([random_subset(100, 0.2, g) for _ in range(200)])
    assert abs((uniform >= 50).float().mean().item() - 0.5) < 0.05


def test_selection_is_a_function_of_the_generator_state():
    losses = torch.rand(16, generator=torch.Generator().manual_seed(3))
    a = select_by_loss(losses, 0.5, torch.Generator().manual_seed(7))
    b = select_by_loss(losses, 0.5, torch.Generator().manual_seed(7))
    assert torch.equal(a, b)


def test_kept_count_never_empties_a_batch():
    assert kept_count(3, 0.1) == 1
    assert kept_count(10, 0.5) == 5


def test_threshold_keeps_losses_at_or_above_it_else_the_largest():
    losses = torch.tensor([0.05, 0.5, 0.01, 0.2])
    assert at_least_threshold(losses, 0.1, min_keep=1).tolist() == [1, 3]
    assert at_least_threshold(losses, 1.0, min_keep=2).tolist() == [1, 3]


def test_rho_keeps_the_largest_reducible_loss_not_the_largest_loss():
    losses = torch.tensor([5.0, 1.0, 3.0, 0.5])
    reference = torch.tensor([4.9, 0.1, 0.2, 0.4])  # sample 0: noisy, high but irreducible
    assert top_reducible(losses, reference, keep=0.5).tolist() == [1, 2]


def test_window_is_half_open_and_interrupt_skips_every_kth_step():
    w = ActiveWindow(start=2, end=8, interrupt=2)
    assert [s for s in range(10) if w.active(s)] == [2, 4, 6]
    assert ActiveWindow(0, 3).active_steps() == 3
