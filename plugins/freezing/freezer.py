"""The bookkeeping of which blocks/parameters are frozen; the freezing itself (out of every param
group, optimizer state dropped, ``requires_grad=False``) is :mod:`lightning_eff.frozen`, shared with
the peft family.

Why this is resume-safe: Lightning restores a checkpoint's optimizer state with
``optimizer.load_state_dict`` *after* ``on_fit_start``, and that call requires the same number of
parameters in every group as when the state was saved. The frozen set is in the technique's
checkpoint state (restored before ``on_fit_start``), so re-freezing it in ``on_fit_start`` gives the
groups exactly the saved structure. Groups are never removed (an emptied group stays): the
learning-rate schedulers index groups by position.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import torch
from torch import nn

from lightning_eff.frozen import freeze_parameters

from .blocks import Blocks, parameters_by_block


def unique_parameters(module: nn.Module) -> list[nn.Parameter]:
    return list({id(p): p for p in module.parameters()}.values())


class BlockFreezer:
    """The frozen blocks of one model and the parameters frozen because of them.

    A parameter shared by several blocks (an LM head tied to the input embedding) is frozen only
    once every block holding it is frozen: freezing the embedding must not stop the head's training.
    Parameters that were already frozen by the user are left alone and not counted as ours.
    """

    def __init__(self, model: nn.Module, blocks: Blocks) -> None:
        self.blocks = blocks
        self.block_params = parameters_by_block(blocks)
        self.all_params = unique_parameters(model)
        self.total = sum(p.numel() for p in self.all_params)
        self.user_frozen = {id(p) for p in self.all_params if not p.requires_grad}
        self.holders: dict[int, set[int]] = {}
        for i, params in enumerate(self.block_params):
            for p in params:
                self.holders.setdefault(id(p), set()).add(i)
        self.frozen_blocks: set[int] = set()
        self.frozen_params: dict[int, nn.Parameter] = {}

    def __len__(self) -> int:
        return len(self.blocks)

    def rebound(self, model: nn.Module) -> BlockFreezer:
        """This freezer if ``model``'s parameters are the ones it holds, else a new one over the
        same blocks (FSDP2 replaced the parameters); call it before anything is frozen."""
        if [id(p) for p in unique_parameters(model)] == [id(p) for p in self.all_params]:
            return self
        if self.frozen_params:
            raise RuntimeError("the model's parameters were replaced after freezing started")
        return BlockFreezer(model, self.blocks)

    def freeze_blocks(
        self, indices: Iterable[int], optimizers: Sequence[torch.optim.Optimizer]
    ) -> list[nn.Parameter]:
        """Freeze these blocks (already frozen ones are skipped); returns the parameters newly frozen."""
        new = set(indices) - self.frozen_blocks
        if not new:
            return []
        self.frozen_blocks |= new
        newly = [
            p
            for i in sorted(self.frozen_blocks)
            for p in self.block_params[i]
            if id(p) not in self.frozen_params
            and id(p) not in self.user_frozen
            and self.holders[id(p)] <= self.frozen_blocks
        ]
        newly = list({id(p): p for p in newly}.values())
        freeze_parameters(newly, optimizers)
        self.frozen_params.update((id(p), p) for p in newly)
        return newly

    def freeze_parameters(
        self, params: Iterable[nn.Parameter], optimizers: Sequence[torch.optim.Optimizer]
    ) -> None:
        """Freeze single parameters (not whole blocks); a block counts as frozen once all of its are."""
        params = [p for p in params if id(p) not in self.frozen_params and id(p) not in self.user_frozen]
        freeze_parameters(params, optimizers)
        self.frozen_params.update((id(p), p) for p in params)
        done = self.frozen_params.keys() | self.user_frozen
        self.frozen_blocks |= {i for i, ps in enumerate(self.block_params) if all(id(p) in done for p in ps)}

    def freeze_prefix(self, count: int, optimizers: Sequence[torch.optim.Optimizer]) -> list[nn.Parameter]:
        return self.freeze_blocks(range(count), optimizers)

    def trainable_after(self, indices: Iterable[int]) -> int:
        """Parameters (elements) still trained if these blocks were frozen (for preflight)."""
        frozen = set(indices)
        return sum(
            p.numel()
            for p in self.all_params
            if id(p) not in self.user_frozen and not (id(p) in self.holders and self.holders[id(p)] <= frozen)
        )

    # -- metrics -------------------------------------------------------------------------------------

    def leading_blocks(self, frozen: Callable[[nn.Parameter], bool], limit: int) -> int:
        """How many leading blocks, at most ``limit``, have every parameter ``frozen``."""
        count = 0
        while count < limit and all(frozen(p) for p in self.block_params[count]):
            count += 1
        return count

    def prefix_length(self) -> int:
        count = 0
        while count in self.frozen_blocks:
            count += 1
        return count

    def metrics(self) -> dict[str, float]:
        frozen = sum(p.numel() for p in self.frozen_params.values())
        return {
            "frozen_param_fraction": frozen / max(1, self.total),
            "frozen_block_fraction": len(self.frozen_blocks) / max(1, len(self.blocks)),
            "frozen_blocks": float(len(self.frozen_blocks)),
            "frozen_prefix_blocks": float(self.prefix_length()),
        }
