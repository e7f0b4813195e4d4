"""Weights a recipe names (a reference model, a teacher), read as data, and the seeded build of the
model they load into.

Shared by the data family's reference models (RHO-LOSS) and the distillation family's teachers: a
recipe is data, so a weights file is read with ``torch.load(weights_only=True)`` or safetensors
(tensors and plain containers only: a crafted pickle cannot run code), and a model is built from a
class the caller has checked (:func:`lightning_eff.imports.import_subclass`) inside a forked random
state, so loading it leaves the run's random stream untouched.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch

from lightning_eff.errors import ConfigError, require

# Files weights may come from; all are read as data, never as pickled code.
STATE_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors")
CHECKPOINT_SUFFIX = ".ckpt"


def load_state_file(path: Path, option: str = "reference", class_option: str = "reference_class") -> dict[str, Any]:
    """The mapping stored in ``path``: safetensors, or ``torch.load(weights_only=True)``.

    ``option`` names the setting the path came from and ``class_option`` the one naming the model
    class, for the error messages. Anything unreadable is a ConfigError naming the fix."""
    text = str(path)
    if path.suffix == ".safetensors":
        safetensors_torch = require("safetensors.torch", f"{option}={text!r}", package="safetensors")
        try:
            return dict(safetensors_torch.load_file(text, device="cpu"))
        except Exception as exc:  # noqa: BLE001 - any unreadable file gets the same advice
            raise ConfigError(f"{option}={text!r} is not a readable safetensors file ({exc})") from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(
            f"{option}={text!r} holds pickled Python objects, which could run code when loaded, so it is "
            f"refused ({reason}). Save the weights only: torch.save(model.state_dict(), path) or a "
            f".safetensors file, and name the model's class with {class_option}='pkg.mod:Class'"
        ) from None
    except Exception as exc:  # noqa: BLE001
        raise ConfigError(f"{option}={text!r} is unreadable ({type(exc).__name__}: {exc})") from None
    if not isinstance(obj, dict):
        raise ConfigError(
            f"{option}={text!r} holds a {type(obj).__name__}, not a state dict: save torch.save(model.state_dict(), path)"
        )
    return obj


def build_fresh_module(module_class: type, kwargs: dict[str, Any], seed: int) -> Any:
    """``module_class(**kwargs)`` initialised from ``seed``, without touching the global random state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return module_class(**kwargs)
