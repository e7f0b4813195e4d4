"""A sharded FSDP2 checkpoint (a folder) turned into one file that a single-process run loads.

Lightning's ModelParallelStrategy saves a folder by default: ``meta.pt`` (loops, callbacks: every
technique's state) plus torch.distributed.checkpoint shards of the model (``state_dict``) and of
each optimizer (``optimizer_0``...), keyed by parameter name. Lightning's own
``consolidate_checkpoint`` script expects the older FSDPStrategy layout (a ``model`` key), and a
single-process Trainer wants optimizer state keyed by position; this module bridges both. The
alternative at save time is ``ModelParallelStrategy(save_distributed_checkpoint=False)``: rank 0
writes one full file (every parameter gathered to it: needs the whole model in its CPU memory).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch


def _positional(optimizer_state: dict[str, Any]) -> dict[str, Any]:
    """Optimizer state keyed by parameter name -> keyed by position, as ``Optimizer.state_dict`` numbers
    parameters (in group order)."""
    groups = optimizer_state["param_groups"]
    index = {name: i for i, name in enumerate(name for g in groups for name in g["params"])}
    return {
        "state": {index[name]: value for name, value in optimizer_state["state"].items()},
        "param_groups": [{**g, "params": [index[name] for name in g["params"]]} for g in groups],
    }


def consolidate_fsdp2_checkpoint(folder: str | Path) -> dict[str, Any]:
    """Load a sharded checkpoint folder, in one process, as a full Lightning checkpoint dict."""
    from lightning.fabric.utilities.load import _load_distributed_checkpoint

    checkpoint = _load_distributed_checkpoint(Path(folder))
    keys = sorted((k for k in checkpoint if re.fullmatch(r"optimizer_[0-9]+", k)), key=lambda k: int(k.split("_")[1]))
    checkpoint["optimizer_states"] = [_positional(checkpoint.pop(k)) for k in keys]
    return checkpoint


def save_consolidated(folder: str | Path, output: str | Path) -> Path:
    """Write :func:`consolidate_fsdp2_checkpoint`'s result to ``output`` (``trainer.fit(ckpt_path=output)``)."""
    torch.save(consolidate_fsdp2_checkpoint(folder), output)
    return Path(output)
