"""RhoLoss's reference ("irreducible loss") model: where it comes from, how it is trained, and the
per-sample reference losses it gives, precomputed once per training sample.

A reference is anything that maps a training batch to per-sample losses, shape ``[N]``:

- a module with ``per_sample_loss(batch)`` (a LightningModule mixing in ``EfficientModule``);
- a plain callable ``batch -> losses``;
- named by a recipe: a class path ``"pkg.module:Class"`` (a ``torch.nn.Module`` subclass, built
  here), or a weights file (a Lightning ``.ckpt``, or a state dict in ``.pt``/``.safetensors``) loaded
  into ``reference_class`` or a fresh copy of the training module. A recipe is data: files are read
  with ``weights_only=True`` and a class path never names anything but such a class;
- trained here on a holdout split (:func:`train_reference`): a fresh instance of the training
  module's class, optionally smaller (``reference_hparams``).

Nothing here touches the global random state: model initialisation and batch order come from the
seed the caller passes (``torch.random.fork_rng``), so a run with and without a reference trained
in the middle of it draws the same random numbers afterwards.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Subset

from lightning_eff.errors import ConfigError
from lightning_eff.imports import import_subclass
from lightning_eff.weights import CHECKPOINT_SUFFIX, STATE_SUFFIXES, build_fresh_module, load_state_file

ReferenceFn = Callable[[Any], Tensor]


def import_class(path: str, base: type, option: str) -> type:
    """``"pkg.module:Class"`` -> the class, which must subclass ``base``.

    A recipe is data: its class paths may name only a class of the expected kind, which the caller
    then builds itself. Any other object (``tempfile:mkdtemp``, ``os:system``) is refused uncalled."""
    return import_subclass(path, base, option, f"a class path as 'pkg.module:ClassName' (a {base.__qualname__} subclass)")


def build_reference_model(
    pl_module: Any, reference_class: str | None, hparams: dict[str, Any], seed: int, saved_hparams: dict | None = None
) -> torch.nn.Module:
    """An untrained reference: ``reference_class(**hparams)``, else a fresh copy of the training
    module's class from ``saved_hparams`` (a checkpoint's) or the module's own + ``hparams``."""
    if reference_class is not None:
        cls = import_class(reference_class, torch.nn.Module, "reference_class")
        kwargs = dict(hparams)
    else:
        if pl_module is None:
            raise ConfigError("a reference weights file needs reference_class='pkg.mod:Class' to build its model")
        cls = type(pl_module)
        if saved_hparams is not None:
            kwargs = {**saved_hparams, **hparams}
        else:
            kwargs = fresh_module_kwargs(pl_module, hparams)
            if kwargs is None:
                raise ConfigError(
                    f"cannot rebuild {cls.__name__} for the reference weights from its saved hyperparameters + "
                    f"reference_hparams={hparams}: call self.save_hyperparameters() in __init__ or give "
                    "reference_class='pkg.mod:Class'"
                )
    try:
        return build_fresh_module(cls, kwargs, seed)
    except TypeError as exc:
        raise ConfigError(f"cannot build the reference {cls.__name__}(**{kwargs}): {exc}") from None


def load_reference(
    spec: Any,
    pl_module: Any = None,
    reference_class: str | None = None,
    hparams: dict[str, Any] | None = None,
    seed: int = 0,
) -> Any:
    """A reference from ``spec``: an object (returned as is), a weights file, or a class path.

    - ``.ckpt`` (a Lightning checkpoint): its ``state_dict`` loaded into ``reference_class`` or the
      training module's class built from the checkpoint's hyperparameters;
    - ``.pt``/``.pth``/``.bin``/``.safetensors``: a state dict loaded into ``reference_class`` or a
      fresh copy of the training module;
    - ``"pkg.mod:Class"``: a ``torch.nn.Module`` subclass, built as ``Class(**hparams)``.

    Files are read as data (:func:`load_state_file`), never unpickled as code."""
    if not isinstance(spec, (str, os.PathLike)):
        return spec
    text = os.fspath(spec)
    hparams = dict(hparams or {})
    path = Path(text)
    if path.suffix in (CHECKPOINT_SUFFIX, *STATE_SUFFIXES) or path.exists():
        if not path.is_file():
            raise ConfigError(f"reference={text!r}: no such weights file")
        state = load_state_file(path)
        saved_hparams = None
        if path.suffix == CHECKPOINT_SUFFIX or "state_dict" in state:
            if not isinstance(state.get("state_dict"), dict):
                raise ConfigError(f"reference={text!r} is not a Lightning checkpoint: it has no 'state_dict'")
            saved_hparams = dict(state.get("hyper_parameters") or {})
            state = state["state_dict"]
        model = build_reference_model(pl_module, reference_class, hparams, seed, saved_hparams)
        try:
            model.load_state_dict(state)
        except (RuntimeError, TypeError) as exc:
            raise ConfigError(
                f"reference={text!r} does not fit {type(model).__name__}: {exc}".splitlines()[0]
                + "; give the matching reference_class / reference_hparams"
            ) from None
        return model.eval()
    if reference_class is not None:
        raise ConfigError(f"reference_class={reference_class!r} only applies to a reference weights file")
    cls = import_class(text, torch.nn.Module, "reference")
    try:
        return build_fresh_module(cls, hparams, seed).eval()
    except TypeError as exc:
        raise ConfigError(f"reference={text!r}: cannot build {cls.__name__}(**{hparams}): {exc}") from None


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
