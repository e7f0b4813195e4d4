"""EfficientModule: the mixin through which techniques change what a Callback cannot.

A Lightning Callback cannot replace a batch or a loss. A LightningModule that mixes in
``EfficientModule`` and implements :meth:`per_sample_loss` lets techniques select samples
(``leff_select_batch``), weight them (``leff_sample_weights``) and add auxiliary losses
(``leff_aux_losses``)::

    class MyModel(EfficientModule, L.LightningModule):
        def per_sample_loss(self, batch):
            x, y = batch
            return F.cross_entropy(self(x), y, reduction="none")   # shape [N]

``training_step`` defaults to :meth:`efficient_loss`; a custom ``training_step`` calls it too.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch


def batch_size_of(batch: Any) -> int:
    """Number of samples in a batch of tensors, tuples/lists or mappings (first tensor found)."""
    if isinstance(batch, torch.Tensor):
        return batch.shape[0]
    if isinstance(batch, Mapping):
        values = list(batch.values())
    elif isinstance(batch, Sequence) and not isinstance(batch, str):
        values = list(batch)
    else:
        raise TypeError(f"cannot find the batch dimension of {type(batch).__name__}")
    for value in values:
        try:
            return batch_size_of(value)
        except TypeError:
            continue
    raise TypeError("the batch holds no tensor")


def batch_sample_indices(sampler: Any, batch_idx: int, batch_size: int, batch: Any) -> torch.Tensor:
    """Dataset indices of the batch Lightning calls ``batch_idx``, from a sampler that records the
    indices of the epoch it iterates in ``epoch_indices`` (``InfoBatchSampler``); the last batch may be
    shorter than ``batch_size``. A sampler with ``position_of_batch`` says where in ``epoch_indices``
    that batch starts (after a mid-epoch resume ``batch_idx`` carries on while an ordinary DataLoader
    restarts its epoch); otherwise batch ``b`` starts at ``b * batch_size``."""
    locate = getattr(sampler, "position_of_batch", None)
    offset = locate(batch_idx, batch_size) if callable(locate) else batch_idx * batch_size
    return torch.tensor(sampler.epoch_indices[offset : offset + batch_size_of(batch)], dtype=torch.long)


def index_batch(batch: Any, index: torch.Tensor) -> Any:
    """Select samples ``index`` (along dim 0) of every tensor in a (nested) batch."""
    if isinstance(batch, torch.Tensor):
        return batch.index_select(0, index.to(batch.device))
    if isinstance(batch, Mapping):
        return type(batch)({k: index_batch(v, index) for k, v in batch.items()})
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):
        return type(batch)(*(index_batch(v, index) for v in batch))
    if isinstance(batch, (list, tuple)):
        return type(batch)(index_batch(v, index) for v in batch)
    return batch  # non-tensor metadata is shared by every sample


class EfficientModule:
    """Mixin for LightningModules: batch selection, per-sample weights and auxiliary losses."""

    def per_sample_loss(self, batch: Any) -> torch.Tensor:
        """Return the loss of each sample of ``batch``, shape ``[N]`` (no reduction).

        For token-level language modelling, average each sample's tokens, ignoring padding.
        """
        raise NotImplementedError(
            f"{type(self).__name__} mixes in EfficientModule but does not implement per_sample_loss(batch)"
        )

    def _efficiency_hub(self):
        from lightning_eff.hub import EfficiencyHub

        try:
            trainer = self.trainer  # type: ignore[attr-defined]
        except RuntimeError:  # not attached to a Trainer
            return None
        return EfficiencyHub.of(trainer)

    def efficient_loss(self, batch: Any, batch_idx: int = 0) -> torch.Tensor:
        """The training loss after every technique had its say; logs ``train/loss``."""
        hub = self._efficiency_hub()
        if hub is not None:
            selected = hub.hook.leff_select_batch(module=self, batch=batch, batch_idx=batch_idx)
            if selected is not None:
                batch = selected
        losses = self.per_sample_loss(batch)
        if losses.dim() != 1:
            raise ValueError(f"per_sample_loss must return shape [N], got {tuple(losses.shape)}")
        loss = losses.mean()
        if hub is not None:
            weights = [w for w in hub.hook.leff_sample_weights(module=self, batch=batch, per_sample_loss=losses.detach()) if w is not None]
            if weights:
                combined = torch.stack([w.to(losses) for w in weights]).prod(dim=0)
                loss = (combined * losses).sum() / losses.shape[0]
            for aux in hub.hook.leff_aux_losses(module=self):
                for name, value in (aux or {}).items():
                    loss = loss + value
                    self.log(f"efficiency/aux/{name}", value.detach(), batch_size=losses.shape[0])  # type: ignore[attr-defined]
        self.log("train/loss", losses.detach().mean(), prog_bar=True, batch_size=losses.shape[0])  # type: ignore[attr-defined]
        return loss

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return self.efficient_loss(batch, batch_idx)
