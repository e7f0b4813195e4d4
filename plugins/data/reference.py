"""RhoLoss's reference ("irreducible loss") model: where it comes from, how it is trained, and the
per-sample reference losses it gives, precomputed once per training sample.

A reference is anything that maps a training batch to per-sample losses, shape ``[N]``:

- a module with ``per_sample_loss(batch)`` (a LightningModule mixing in ``EfficientModule``);
- a plain callable ``batch -> losses``;
- loaded from ``"pkg.module:factory"`` (``factory()`` returns one of the above), a Lightning
  ``.ckpt`` of the training module's own class, or a file written by ``torch.save(module)``;
- trained here on a holdout split (:func:`train_reference`): a fresh instance of the training
  module's class, optionally smaller (``reference_hparams``).

Nothing here touches the global random state: model initialisation and batch order come from the
seed the caller passes (``torch.random.fork_rng``), so a run with and without a reference trained
in the middle of it draws the same random numbers afterwards.
"""

from __future__ import annotations

import importlib
import inspect
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Subset

from lightning_eff.errors import ConfigError

ReferenceFn = Callable[[Any], Tensor]


def import_factory(path: str) -> Any:
    """``"pkg.module:name"`` -> the object (called when it is a function or class without arguments)."""
    module_name, sep, attr = path.partition(":")
    if not sep or not module_name or not attr:
        raise ConfigError(f"reference={path!r}: write an import path as 'pkg.module:factory'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"reference={path!r}: cannot import '{module_name}' ({exc})") from None
    try:
        obj = getattr(module, attr)
    except AttributeError:
        raise ConfigError(f"reference={path!r}: module '{module_name}' has no attribute '{attr}'") from None
    if inspect.isfunction(obj) or inspect.isclass(obj):
        obj = obj()
    return obj


def load_reference(spec: Any, module_class: type | None = None) -> Any:
    """A reference from ``spec``: an object (returned as is), an import path, or a checkpoint path."""
    if not isinstance(spec, (str, os.PathLike)):
        return spec
    text = os.fspath(spec)
    path = Path(text)
    if path.suffix in (".ckpt", ".pt", ".pth") or path.exists():
        if not path.is_file():
            raise ConfigError(f"reference={text!r}: no such checkpoint file")
        if path.suffix == ".ckpt":
            if module_class is None or not hasattr(module_class, "load_from_checkpoint"):
                raise ConfigError(f"reference={text!r}: a Lightning checkpoint needs the LightningModule class")
            return module_class.load_from_checkpoint(str(path), map_location="cpu")
        obj = torch.load(path, map_location="cpu", weights_only=False)
        if isinstance(obj, dict):
            raise ConfigError(
                f"reference={text!r} holds a state dict, not a model: save the module itself "
                "(torch.save(model, path)) or a Lightning .ckpt"
            )
        return obj
    return import_factory(text)


def reference_fn(reference: Any) -> ReferenceFn:
    """The ``batch -> per-sample losses`` function of a reference object."""
    if hasattr(reference, "per_sample_loss"):
        return reference.per_sample_loss
    if callable(reference):
        return reference
    raise ConfigError(
        f"the reference ({type(reference).__name__}) is neither callable nor has per_sample_loss(batch)"
    )


def fresh_module_kwargs(pl_module: Any, overrides: dict[str, Any]) -> dict[str, Any] | None:
    """Arguments that rebuild ``type(pl_module)`` (its saved hyperparameters + ``overrides``), or
    ``None`` when the constructor cannot be called with them."""
    hparams = dict(getattr(pl_module, "hparams", {}) or {})
    kwargs = {**hparams, **overrides}
    try:
        inspect.signature(type(pl_module)).bind(**kwargs)
    except TypeError:
        return None
    return kwargs


def build_fresh_module(module_class: type, kwargs: dict[str, Any], seed: int) -> Any:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return module_class(**kwargs)


def move_to(batch: Any, device: torch.device) -> Any:
    from lightning.fabric.utilities.apply_func import move_data_to_device

    return move_data_to_device(batch, device)


def train_reference(
    model: torch.nn.Module,
    dataset: Any,
    indices: Sequence[int],
    collate_fn: Callable | None,
    batch_size: int,
    steps: int,
    lr: float,
    seed: int,
    device: torch.device,
    progress: Callable[[int], None] | None = None,
) -> torch.nn.Module:
    """Train ``model`` on ``dataset[indices]`` for ``steps`` AdamW steps of ``per_sample_loss(...).mean()``.

    Batches are drawn from seeded permutations of ``indices`` (epochs as needed)."""
    fn = reference_fn(model)
    model.to(device).train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    g = torch.Generator().manual_seed(seed)
    indices = torch.as_tensor(list(indices), dtype=torch.long)
    batch_size = max(1, min(batch_size, indices.numel()))
    queue: list[int] = []
    with torch.random.fork_rng(devices=[]), torch.enable_grad():
        torch.manual_seed(seed)  # dropout and the like inside the reference
        for step in range(steps):
            if len(queue) < batch_size:
                queue += indices[torch.randperm(indices.numel(), generator=g)].tolist()
            chosen, queue = queue[:batch_size], queue[batch_size:]
            batch = (collate_fn or _default_collate)([dataset[i] for i in chosen])
            loss = fn(move_to(batch, device)).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if progress is not None:
                progress(step)
    return model.eval()


def _default_collate(samples: list[Any]) -> Any:
    from torch.utils.data import default_collate

    return default_collate(samples)


@torch.no_grad()
def score_indices(
    fn: ReferenceFn,
    dataset: Any,
    indices: Sequence[int],
    collate_fn: Callable | None,
    batch_size: int,
    device: torch.device,
) -> Tensor:
    """Reference losses of ``dataset[indices]`` in that order (float32, CPU)."""
    loader = DataLoader(Subset(dataset, list(indices)), batch_size=batch_size, shuffle=False, collate_fn=collate_fn)
    out = [fn(move_to(batch, device)).detach().float().cpu().reshape(-1) for batch in loader]
    return torch.cat(out) if out else torch.zeros(0)


def folds(n: int, count: int, seed: int) -> list[Tensor]:
    """A seeded random split of ``range(n)`` into ``count`` near-equal folds (each sorted)."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return [part.sort().values for part in perm.tensor_split(count)]


# --- the cache file ---------------------------------------------------------------------------------


def save_cache(path: str | os.PathLike, losses: Tensor, meta: dict[str, Any]) -> None:
    """Write ``{"losses", "meta"}`` atomically (a temporary file renamed over ``path``)."""
    from .index_file import atomic_write

    payload = {"losses": losses.detach().float().cpu(), "meta": dict(meta)}
    atomic_write(path, lambda tmp: torch.save(payload, tmp))


def load_cache(path: str | os.PathLike, size: int) -> Tensor | None:
    """Cached reference losses for a dataset of ``size`` samples, or ``None`` (no file yet).

    A file for a different number of samples is an error: it belongs to another dataset."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
        losses = data["losses"]
    except Exception as exc:  # noqa: BLE001 - any unreadable file gets the same advice
        raise ConfigError(f"rho_loss cache {str(path)!r} is unreadable ({exc}): delete it to recompute") from None
    if losses.shape != (size,):
        raise ConfigError(
            f"rho_loss cache {str(path)!r} holds {tuple(losses.shape)} reference losses but the training "
            f"set has {size} samples: delete it to recompute, or point cache= at the right file"
        )
    return losses.float()
