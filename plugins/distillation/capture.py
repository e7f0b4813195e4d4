"""Seeing what a Callback cannot be handed: the student's inputs and outputs of the training forward.

Forward hooks record the inputs and output of the student's entry module (the LightningModule or the
submodule named by ``student_module``) and the outputs of matched intermediate modules, during the
training forward only (module in train mode, gradients on): a batch selector's no-grad scoring
forward and validation are not recorded. The teacher is then run on exactly the inputs the student
saw, after any batch selection.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn


class ForwardCapture:
    """Records ``(args, kwargs, output)`` of ``module``'s forward, and named submodules' outputs."""

    def __init__(self, entry: nn.Module, features: dict[str, nn.Module] | None = None, always: bool = False) -> None:
        self.inputs: tuple[tuple, dict[str, Any]] | None = None
        self.output: Any = None
        self.features: dict[str, torch.Tensor] = {}
        self.active = False
        self.always = always  # record any forward (the preflight probe), not only training ones
        self.handles = [entry.register_forward_hook(self._entry_hook, with_kwargs=True)]
        for name, module in (features or {}).items():
            self.handles.append(module.register_forward_hook(self._feature_hook(name)))

    def _recording(self, module: nn.Module) -> bool:
        return self.active and (self.always or (module.training and torch.is_grad_enabled()))

    def _entry_hook(self, module: nn.Module, args: tuple, kwargs: dict[str, Any], output: Any) -> None:
        if self._recording(module):
            self.inputs, self.output = (args, kwargs), output

    def _feature_hook(self, name: str) -> Callable:
        def hook(module: nn.Module, args: tuple, output: Any) -> None:
            if self._recording(module):
                self.features[name] = output[0] if isinstance(output, (tuple, list)) else output

        return hook

    def clear(self) -> None:
        self.inputs, self.output, self.features = None, None, {}

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles = []


def match_modules(model: nn.Module, patterns: Sequence[str]) -> dict[str, nn.Module]:
    """Submodules whose qualified name matches any of ``patterns`` (fnmatch: ``blocks.*``), in
    module order; the root (name ``""``) never matches."""
    return {name: m for name, m in model.named_modules() if name and any(fnmatch.fnmatchcase(name, p) for p in patterns)}


def submodule(model: nn.Module, name: str | None) -> nn.Module:
    """``model`` itself (``None`` or ``""``) or its submodule ``name``; a missing name is a KeyError
    listing a few names that exist."""
    if not name:
        return model
    modules = dict(model.named_modules())
    if name not in modules:
        known = [n for n in modules if n][:8]
        raise KeyError(f"no submodule named {name!r} (some that exist: {known})")
    return modules[name]


def probe_batch(loader: Any, size: int = 2) -> Any:
    """A small batch made of the first samples of ``loader``'s dataset, collated by the loader's own
    ``collate_fn``: no sampler is iterated, so no random number is drawn and no sampler state moves."""
    from torch.utils.data import default_collate

    dataset = loader.dataset
    count = min(size, len(dataset))
    collate = loader.collate_fn or default_collate
    return collate([dataset[i] for i in range(count)])
