"""Per-sample losses for classification and token-level LM, padding ignored."""

import torch
from torch.nn import functional as F

from lightning_eff.plugins.data.losses import per_sample_classification_loss, per_sample_token_loss


def test_token_loss_is_the_mean_over_each_samples_non_padding_tokens():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, 7, generator=g)
    labels = torch.randint(0, 7, (2, 5), generator=g)
    labels[1, 3:] = -100  # sample 1: last two tokens are padding
    got = per_sample_token_loss(logits, labels)
    first = F.cross_entropy(logits[0], labels[0])
    second = F.cross_entropy(logits[1, :3], labels[1, :3])
    assert torch.allclose(got, torch.stack([first, second]))


def test_padding_logits_do_not_change_the_loss():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(1, 4, 3, generator=g)
    labels = torch.tensor([[0, 2, -100, -100]])
    changed = logits.clone()
    changed[0, 2:] += 100.0
    assert torch.equal(per_sample_token_loss(logits, labels), per_sample_token_loss(changed, labels))


def test_classification_loss_matches_unreduced_cross_entropy():
    logits, targets = torch.randn(6, 4), torch.tensor([0, 1, 2, 3, 0, 1])
    assert torch.allclose(
        per_sample_classification_loss(logits, targets), F.cross_entropy(logits, targets, reduction="none")
    )
