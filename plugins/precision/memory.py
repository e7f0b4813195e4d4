"""What precision saves, measured: parameter, optimizer-state and activation bytes, and which Linear
layers actually ran in low precision. Pure functions plus :class:`StepProbe`, which watches one
training step (forward hooks and saved-tensor hooks) and is removed after it."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

LOW_DTYPES = (torch.bfloat16, torch.float16, torch.float8_e4m3fn, torch.float8_e5m2)


def tensor_bytes(tensors: Iterable[torch.Tensor]) -> int:
    """Bytes of the distinct tensors (by identity) of an iterable."""
    seen: dict[int, torch.Tensor] = {}
    for t in tensors:
        if isinstance(t, torch.Tensor):
            seen.setdefault(id(t), t)
    return sum(t.numel() * t.element_size() for t in seen.values())


def parameter_bytes(module: nn.Module) -> int:
    """Bytes held by the module's parameters (shared ones counted once)."""
    return tensor_bytes(module.parameters())


def optimizer_state_bytes(optimizers: Iterable[Any]) -> int:
    """Bytes of every tensor in the optimizers' per-parameter state (moments, codes, scales, steps)."""
    tensors: list[torch.Tensor] = []
    for opt in optimizers:
        opt = getattr(opt, "_optimizer", opt)  # LightningOptimizer
        for state in opt.state.values():
            tensors += [v for v in state.values() if isinstance(v, torch.Tensor)]
    return tensor_bytes(tensors)


def _first_tensor(value: Any) -> torch.Tensor | None:
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, (list, tuple)):
        return next((t for t in map(_first_tensor, value) if t is not None), None)
    if isinstance(value, dict):
        return next((t for t in map(_first_tensor, value.values()) if t is not None), None)
    return getattr(value, "logits", None) if hasattr(value, "logits") else None


class StepProbe:
    """Records, during one forward/backward, the output dtype of every Linear (low or full
    precision), the output and parameter dtypes of the modules a policy keeps in fp32, and the bytes
    of the tensors autograd saves for the backward (activation memory)."""

    def __init__(self, root: nn.Module, watched: dict[str, nn.Module]) -> None:
        self.linear_dtypes: dict[str, torch.dtype] = {}
        self.watched_dtypes: dict[str, torch.dtype] = {}
        self.saved_bytes = 0
        self._storages: set[int] = set()
        self._handles = []
        for name, module in root.named_modules():
            if isinstance(module, nn.Linear) or type(module).__name__ == "Float8Linear":
                self._handles.append(module.register_forward_hook(self._record(self.linear_dtypes, name)))
        for name, module in watched.items():
            self._handles.append(module.register_forward_hook(self._record(self.watched_dtypes, name)))
        self._saved = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t)
        self._saved.__enter__()

    @staticmethod
    def _record(into: dict[str, torch.dtype], name: str):
        def hook(module, args, output):
            t = _first_tensor(output)
            if t is not None and t.is_floating_point():
                into.setdefault(name, t.dtype)

        return hook

    def _pack(self, t: torch.Tensor) -> torch.Tensor:
        try:
            key = t.untyped_storage().data_ptr()
        except RuntimeError:  # tensors without storage (fake, sparse) are not counted
            return t
        if key not in self._storages:
            self._storages.add(key)
            self.saved_bytes += t.untyped_storage().nbytes()
        return t

    def close(self) -> None:
        """Remove every hook (call at the end of the step, also when it failed)."""
        if self._saved is not None:
            self._saved.__exit__(None, None, None)
            self._saved = None
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def low_precision_linear_fraction(self) -> float:
        if not self.linear_dtypes:
            return 0.0
        low = sum(1 for d in self.linear_dtypes.values() if d in LOW_DTYPES)
        return low / len(self.linear_dtypes)

    def fp32_violations(self, watched: dict[str, nn.Module]) -> list[str]:
        """Watched modules whose output or parameters were not fp32 (the policy did not take)."""
        bad = [f"{n} (output {d})" for n, d in self.watched_dtypes.items() if d != torch.float32]
        for name, module in watched.items():
            dtypes = {p.dtype for p in module.parameters() if p.is_floating_point()}
            if dtypes - {torch.float32}:
                bad.append(f"{name} (parameters {sorted(map(str, dtypes))})")
        return bad
