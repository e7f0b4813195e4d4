"""Sharded (FSDP2) parameters as the techniques see them.

Under Lightning's ``ModelParallelStrategy`` the user's ``configure_model`` calls ``fully_shard``,
which replaces every parameter of a sharded module by a new ``nn.Parameter`` holding a ``DTensor``
(each rank keeps a slice of dim 0). Two rules follow for techniques:

- parameters are final only from ``on_fit_start`` on: a technique that looked parameters up in
  ``setup`` (which runs before ``configure_model``) must look them up again;
- decisions taken from parameter values (thresholds, norms) must use the full tensor (collective:
  every rank calls it) so that ranks agree; edits (masks) apply to each rank's local slice.

The helpers below do both for plain tensors too, so technique code has one path for every strategy.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn


def _dtensor_type() -> type | None:
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # torch built without distributed support
        return None
    return DTensor


def is_sharded(tensor: Any) -> bool:
    """Whether ``tensor`` is a DTensor (a parameter or gradient of an FSDP2-sharded module)."""
    dtensor = _dtensor_type()
    return dtensor is not None and isinstance(tensor, dtensor)


def sharded_parameter_names(module: nn.Module) -> list[str]:
    return [name for name, p in module.named_parameters() if is_sharded(p)]


def full_value(tensor: Tensor) -> Tensor:
    """The whole tensor on every rank (an all-gather for a DTensor: every rank must call it)."""
    return tensor.full_tensor() if is_sharded(tensor) else tensor


def local_value(tensor: Tensor) -> Tensor:
    """This rank's slice of a DTensor (a view that edits the parameter in place), else the tensor."""
    return tensor.to_local() if is_sharded(tensor) else tensor


def local_part(full: Tensor, like: Tensor) -> Tensor:
    """This rank's slice of ``full`` (identical on every rank) laid out like the DTensor ``like``.

    No communication: every rank holds ``full`` already (``src_data_rank=None``)."""
    if not is_sharded(like):
        return full
    from torch.distributed.tensor import distribute_tensor

    return distribute_tensor(full, like.device_mesh, like.placements, src_data_rank=None).to_local()


def full_from_local(local: Tensor, like: Tensor) -> Tensor:
    """The whole tensor whose slice on this rank is ``local``, laid out like the DTensor ``like``
    (an all-gather: every rank must call it); ``local`` itself when ``like`` is a plain tensor."""
    if not is_sharded(like):
        return local
    from torch.distributed.tensor import DTensor

    sharded = DTensor.from_local(local, like.device_mesh, like.placements, shape=like.shape, stride=like.stride())
    return sharded.full_tensor()


def gather_full(obj: Any) -> Any:
    """``obj`` (nested dicts/lists/tuples) with every DTensor replaced by its full tensor on CPU."""
    if is_sharded(obj):
        return obj.full_tensor().detach().cpu()
    if isinstance(obj, Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: gather_full(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(gather_full(v) for v in obj)
    return obj


def already_sharded_problem(name: str, module: nn.Module) -> str | None:
    """The preflight sentence for a technique that must act before sharding, on a sharded model."""
    names = sharded_parameter_names(module)
    if not names:
        return None
    shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
    return (
        f"{name} changes modules or parameters in setup, before Lightning calls configure_model, but this model's "
        f"parameters are already sharded DTensors ({shown}): call fully_shard inside LightningModule.configure_model "
        "(not before trainer.fit), so that the technique acts on the whole model first"
    )


@torch.no_grad()
def global_norm(tensor: Tensor) -> Tensor:
    """The 2-norm of the whole tensor, the same on every rank (a DTensor's local norms are combined)."""
    return full_value(torch.linalg.vector_norm(tensor.float()))
