"""Gradient noise (Neelakantan et al. 2015, "Adding Gradient Noise Improves Learning for Very Deep
Networks"): before every optimizer step, add Gaussian noise of variance ``eta / (1 + t) ** gamma``
to each gradient, ``t`` the optimizer step. The paper uses ``eta`` in {0.01, 0.3, 1.0} and
``gamma = 0.55``.

The math is in two pure functions (:func:`noise_std_at`, :func:`add_gradient_noise`); the
technique only decides when to call them and keeps its random generator in the checkpoint.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from fnmatch import fnmatchcase
from typing import Any

import torch
from lightning_eff import Technique, TechniqueConfig
from pydantic import Field


def noise_std_at(step: int, eta: float, gamma: float) -> float:
    """Standard deviation of the noise added at optimizer step ``step``."""
    return math.sqrt(eta / (1 + step) ** gamma)


@torch.no_grad()
def add_gradient_noise(parameters: Iterable[torch.nn.Parameter], std: float, generator: torch.Generator) -> int:
    """Add ``N(0, std**2)`` to every existing gradient, in place; returns how many were changed.

    The noise is drawn on the CPU from ``generator``, in parameter order: DDP ranks with the same
    seed add the same noise to their (already averaged) gradients and stay identical.
    """
    changed = 0
    for param in parameters:
        if param.grad is None:
            continue
        noise = torch.randn(param.grad.shape, generator=generator, dtype=torch.float32)
        param.grad.add_(noise.to(device=param.grad.device, dtype=param.grad.dtype), alpha=std)
        changed += 1
    return changed


def matching_parameters(module: torch.nn.Module, patterns: Sequence[str]) -> list[tuple[str, torch.nn.Parameter]]:
    """Trainable parameters whose name matches one of the glob ``patterns`` (all when empty)."""
    return [
        (name, param)
        for name, param in module.named_parameters()
        if param.requires_grad and (not patterns or any(fnmatchcase(name, p) for p in patterns))
    ]


class GradientNoiseConfig(TechniqueConfig):
    eta: float = Field(0.01, gt=0, description="noise variance at step 0 (the paper: 0.01, 0.3 or 1.0)")
    gamma: float = Field(0.55, ge=0, description="decay exponent: the variance is eta / (1 + step) ** gamma")
    parameters: tuple[str, ...] = Field((), description="glob patterns of parameter names that get noise (empty: all)")
    seed: int = Field(0, ge=0, description="seed of the technique's own random generator (kept in checkpoints)")


class GradientNoise(Technique):
    """Add annealed Gaussian noise to the gradients before each optimizer step (Neelakantan et al. 2015)."""

    name = "gradient_noise"
    phase = "optimizer"
    # Pruning zeroes the pruned weights' gradients in the same hook: noise goes in first, so the
    # pruned weights stay exactly zero.
    before = ("gradual_pruning", "structured_pruning", "nm_sparsity")
    Config = GradientNoiseConfig

    def __init__(self, eta: float = 0.01, gamma: float = 0.55, parameters: Sequence[str] = (), seed: int = 0) -> None:
        """
        Args:
            eta: noise variance at step 0.
            gamma: decay exponent of the variance.
            parameters: glob patterns of parameter names that get noise (empty: all).
            seed: seed of the technique's own random generator.
        """
        super().__init__(eta=eta, gamma=gamma, parameters=tuple(parameters), seed=seed)
        self.generator = torch.Generator().manual_seed(self.config.seed)
        self.last_std = 0.0
        self.noisy_steps = 0

    def validate(self, trainer, pl_module) -> list[str]:
        if matching_parameters(pl_module, self.config.parameters):
            return []
        roots = sorted({name.split(".")[0] for name, _ in pl_module.named_parameters()})
        return [
            f"parameters={list(self.config.parameters)} matches no trainable parameter of "
            f"{type(pl_module).__name__}: use glob patterns of parameter names, which start with {roots}"
        ]

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        # Gradients here are summed over accumulation, averaged over DDP ranks and unscaled under AMP.
        c = self.config
        self.last_std = noise_std_at(trainer.global_step, c.eta, c.gamma)
        params = [p for _, p in matching_parameters(pl_module, c.parameters)]
        if add_gradient_noise(params, self.last_std, self.generator):
            self.noisy_steps += 1

    def metrics(self) -> dict[str, float]:  # logged as efficiency/gradient_noise/<key>
        return {"std": self.last_std, "noisy_steps": float(self.noisy_steps)}

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state(), "last_std": self.last_std, "noisy_steps": self.noisy_steps}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.generator.set_state(state_dict["generator"])
        self.last_std = state_dict["last_std"]
        self.noisy_steps = state_dict["noisy_steps"]
