"""Per-sample losses for ``EfficientModule.per_sample_loss``: one number per sample.

Uses the kernel layer's ``per_sample_cross_entropy`` when it is installed (fused on GPU), else
PyTorch. For token-level language modelling a sample's loss is the mean over its tokens whose
label is not ``ignore_index`` (padding), so short and long samples are scored alike.
"""

from __future__ import annotations

from torch import Tensor
from torch.nn import functional as F


def token_cross_entropy(logits: Tensor, labels: Tensor, ignore_index: int = -100) -> Tensor:
    """Cross-entropy of every token, ``[N, T]`` (0 where the label is ``ignore_index``)."""
    try:
        from lightning_eff.kernels import per_sample_cross_entropy
    except ImportError:  # the kernel layer is optional
        per_sample_cross_entropy = None
    flat_logits, flat_labels = logits.flatten(0, -2), labels.flatten()
    if per_sample_cross_entropy is not None:
        losses = per_sample_cross_entropy(flat_logits, flat_labels, ignore_index=ignore_index)
    else:
        losses = F.cross_entropy(
            flat_logits.float(), flat_labels, ignore_index=ignore_index, reduction="none"
        )
    return losses.view(labels.shape)


def per_sample_token_loss(logits: Tensor, labels: Tensor, ignore_index: int = -100) -> Tensor:
    """Mean token loss of each sample, ``[N]``, ignoring padding (a sample of only padding scores 0)."""
    losses = token_cross_entropy(logits, labels, ignore_index)
    counted = (labels != ignore_index).to(losses.dtype)
    return (losses * counted).sum(dim=1) / counted.sum(dim=1).clamp(min=1)


def per_sample_classification_loss(logits: Tensor, targets: Tensor) -> Tensor:
    """Cross-entropy of each sample of a classification batch, ``[N]``."""
    return token_cross_entropy(logits.unsqueeze(1), targets.unsqueeze(1)).squeeze(1)


__all__ = ["per_sample_classification_loss", "per_sample_token_loss", "token_cross_entropy"]
