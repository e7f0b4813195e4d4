"""Keep-masks attached to modules: the one place that stores, applies, saves and removes them.

Where the masks live (the choice GradualPruning, NMSparsity and StructuredPruning share):

- on each pruned module, as a **non-persistent** ``weight_mask`` bool buffer. It follows the module
  across devices (``.to()``, DDP) and is visible to the user (``model.fc.weight_mask``). Being
  non-persistent, it stays out of the model's ``state_dict``: a checkpoint's ``state_dict`` has the
  user's own keys, so ``MyModule.load_from_checkpoint(path)`` builds the plain class and gets weights
  that are already zero where pruned;
- in the technique's ``state_dict`` (the checkpoint's ``callbacks`` section), which is what an exact
  resume needs: the masks are restored into the buffers in place.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from lightning_eff.kernels.nm_sparsity import masked_update_
from lightning_eff.sharding import local_part, local_value

from .masks import sparsity_of

MASK_BUFFER = "weight_mask"


class MaskedWeights:
    """Bool keep-masks (``True`` = kept) for the ``weight`` of each selected module, by module name."""

    def __init__(self, modules: dict[str, nn.Module]) -> None:
        self.modules = dict(modules)
        for module in self.modules.values():
            if MASK_BUFFER not in module._buffers:
                mask = torch.ones(module.weight.shape, dtype=torch.bool, device=module.weight.device)
                module.register_buffer(MASK_BUFFER, mask, persistent=False)

    def names(self) -> list[str]:
        return list(self.modules)

    def weight(self, name: str) -> nn.Parameter:
        return self.modules[name].weight

    def mask(self, name: str) -> Tensor:
        return self.modules[name]._buffers[MASK_BUFFER]

    def masks(self) -> dict[str, Tensor]:
        return {name: self.mask(name) for name in self.modules}

    @torch.no_grad()
    def set(self, name: str, keep: Tensor) -> None:
        # In place: DDP and the optimizer-facing code hold references to the buffer tensor.
        self.mask(name).copy_(keep)

    # Masks are whole on every rank; an FSDP2-sharded weight (DTensor) is edited through its local
    # slice, with the matching slice of the mask.
    @torch.no_grad()
    def apply_to_weights(self) -> None:
        for name in self.modules:
            weight = self.weight(name)
            masked_update_(local_value(weight), local_part(self.mask(name), weight))

    @torch.no_grad()
    def zero_pruned_grads(self) -> None:
        for name in self.modules:
            grad = self.weight(name).grad
            if grad is not None:
                masked_update_(local_value(grad), local_part(self.mask(name), grad))

    def pruned_count(self) -> int:
        return sum(int((~m).sum()) for m in self.masks().values())

    def total_count(self) -> int:
        return sum(m.numel() for m in self.masks().values())

    def layer_sparsity(self) -> dict[str, float]:
        return {name: sparsity_of(mask) for name, mask in self.masks().items()}

    def state_dict(self) -> dict[str, Tensor]:
        return {name: mask.detach().cpu().clone() for name, mask in self.masks().items()}

    @torch.no_grad()
    def load_state_dict(self, masks: dict[str, Tensor]) -> None:
        missing, unexpected = set(self.modules) - set(masks), set(masks) - set(self.modules)
        if missing or unexpected:
            raise RuntimeError(
                f"checkpoint masks do not match the pruned modules (missing {sorted(missing)}, "
                f"unexpected {sorted(unexpected)}): resume with the same model and pruning options"
            )
        for name, mask in masks.items():
            self.set(name, mask.to(self.mask(name).device))

    def remove(self) -> dict[str, Tensor]:
        """Apply the masks a last time and delete the buffers; returns the masks."""
        self.apply_to_weights()
        masks = self.state_dict()
        for module in self.modules.values():
            del module._buffers[MASK_BUFFER]
        return masks
