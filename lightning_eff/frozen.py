"""Freezing parameters for real, for every family that freezes some (freezing, peft).

``requires_grad=False`` alone is not enough: a parameter still in an optimizer param group is moved by
decoupled weight decay and momentum whenever its ``grad`` is a tensor (zeros after
``zero_grad(set_to_none=False)``), and its moments stay in memory for nothing. So a frozen parameter
also leaves every param group and its optimizer state is dropped. Groups are never removed (an emptied
group stays): learning-rate schedulers index groups by position, and a resumed optimizer state must
meet the same group structure it was saved with.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import nn


def remove_from_optimizers(
    params: Iterable[nn.Parameter], optimizers: Sequence[torch.optim.Optimizer]
) -> None:
    """Take ``params`` out of every param group of every optimizer and drop their state."""
    params = list(params)
    ids = {id(p) for p in params}
    for optimizer in optimizers:
        optimizer = getattr(optimizer, "_optimizer", optimizer)  # LightningOptimizer wraps the real one
        for group in optimizer.param_groups:
            group["params"] = [p for p in group["params"] if id(p) not in ids]
        for p in params:
            optimizer.state.pop(p, None)


def freeze_parameters(params: Iterable[nn.Parameter], optimizers: Sequence[torch.optim.Optimizer] = ()) -> None:
    """Freeze for real: no gradient, no optimizer update, no optimizer state."""
    params = list(params)
    for p in params:
        p.requires_grad_(False)
        p.grad = None
    remove_from_optimizers(params, optimizers)
