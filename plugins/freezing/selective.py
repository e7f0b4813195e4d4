"""Selective fine-tuning: train only a chosen subset of the parameters, freeze the rest from step 0.

Presets: ``bias`` (BitFit, Ben Zaken et al. 2022: only the bias terms), ``norm`` (only normalisation
layers' affine parameters), ``bias_and_norm``; ``train`` names parameters by glob pattern
(``classifier.*``); ``train_last_blocks`` keeps the last k blocks trainable ("Less is More: Selective
Layer Finetuning with SubTuning", Kaplun et al. 2023, which picks a subset of layers; the last ones
are the usual choice and the ones that save backward compute). The union of the three is trained.

The frozen set is a function of the configuration and the model only, so it is re-applied in
``on_fit_start`` on every fit, fresh or resumed, before Lightning loads the optimizer state.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

from pydantic import Field
from torch import nn

from lightning_eff.config_types import Patterns
from lightning_eff.surgery import names_matching_each

from .base import FreezingConfig, FreezingTechnique
from .blocks import block_problems
from .freezer import BlockFreezer

Preset = Literal["none", "bias", "norm", "bias_and_norm"]


def is_norm(module: nn.Module) -> bool:
    """LayerNorm, BatchNorm*, GroupNorm, RMSNorm and transformers' ``*RMSNorm`` classes."""
    return any("Norm" in cls.__name__ for cls in type(module).__mro__ if cls.__module__ != "builtins")


def trained_parameter_names(
    model: nn.Module, preset: Preset, patterns: Sequence[str]
) -> tuple[set[str], tuple[str, ...]]:
    """Names of the parameters the preset and the patterns keep trainable, and the patterns that
    matched no parameter."""
    chosen: set[str] = set()
    for module_name, module in model.named_modules():
        for local, _ in module.named_parameters(recurse=False):
            name = f"{module_name}.{local}" if module_name else local
            if (preset in ("bias", "bias_and_norm") and local == "bias") or (
                preset in ("norm", "bias_and_norm") and is_norm(module)
            ):
                chosen.add(name)
    matched, unmatched = names_matching_each((n for n, _ in model.named_parameters()), patterns)
    return chosen | matched, unmatched


class SelectiveFinetuningConfig(FreezingConfig):
    preset: Preset = Field(
        "none", description="bias: BitFit; norm: normalisation layers; bias_and_norm: both"
    )
    train: Patterns = Field(
        (), description="glob patterns of parameter names kept trainable, e.g. 'classifier.*'"
    )
    train_last_blocks: int = Field(0, ge=0, description="keep the last k blocks trainable (SubTuning-style)")


class SelectiveFinetuning(FreezingTechnique):
    """Train only a named subset of parameters (patterns, last blocks, bias-only or norm-only presets)."""

    name = "selective_finetuning"
    Config = SelectiveFinetuningConfig

    def __init__(
        self,
        preset: Preset = "none",
        train: Sequence[str] = (),
        train_last_blocks: int = 0,
        blocks: Sequence[str] = (),
        cache_activations: bool = False,
        static_data: bool = False,
        cache_max_bytes: int = 2**30,
        cache_on: Literal["cpu", "device"] = "cpu",
    ) -> None:
        super().__init__(
            preset=preset,
            train=train,
            train_last_blocks=train_last_blocks,
            blocks=blocks,
            cache_activations=cache_activations,
            static_data=static_data,
            cache_max_bytes=cache_max_bytes,
            cache_on=cache_on,
        )

    def selection(self, pl_module, freezer: BlockFreezer) -> tuple[list[nn.Parameter], tuple[str, ...]]:
        """The parameters to freeze (all but the trained ones, shared ones by identity) and the
        patterns that matched nothing."""
        c = self.config
        names, unmatched = trained_parameter_names(pl_module, c.preset, c.train)
        trained = {id(p) for n, p in pl_module.named_parameters() if n in names}
        last = freezer.block_params[len(freezer) - c.train_last_blocks :] if c.train_last_blocks else []
        trained |= {id(p) for params in last for p in params}
        frozen = [p for p in freezer.all_params if id(p) not in trained and id(p) not in freezer.user_frozen]
        return frozen, unmatched

    def validate(self, trainer, pl_module) -> list[str]:
        c = self.config
        blocks = self.find_blocks(pl_module)
        # only train_last_blocks depends on the blocks' order
        problems = block_problems(
            pl_module, blocks, minimum=max(1, c.train_last_blocks), ordered=c.train_last_blocks > 0
        )
        if problems:
            return problems
        freezer = BlockFreezer(pl_module, blocks)
        frozen, unmatched = self.selection(pl_module, freezer)
        examples = ", ".join(repr(n) for n, _ in list(pl_module.named_parameters())[:4])
        problems += [
            f"train pattern {p!r} matches no parameter; names look like {examples}" for p in unmatched
        ]
        if c.train_last_blocks >= len(blocks):
            problems.append(
                f"train_last_blocks={c.train_last_blocks} keeps all {len(blocks)} blocks trainable: nothing is frozen; lower it"
            )
        if c.preset == "none" and not c.train and not c.train_last_blocks:
            problems.append("nothing is selected for training: set preset, train or train_last_blocks")
        elif not problems:
            trainable = freezer.trainable_after(()) - sum(p.numel() for p in frozen)
            if trainable == 0:
                problems.append(
                    "the selection trains no parameter (freezing everything): widen preset, train or train_last_blocks"
                )
            elif not frozen:
                problems.append(
                    "the selection trains every parameter: nothing is frozen; narrow preset, train or train_last_blocks"
                )
        return problems + (self.cache_problems(trainer, pl_module, freezer) if not problems else [])

    def most_frozen_prefix(self, trainer, freezer: BlockFreezer) -> int:
        """Leading blocks whose every parameter the selection freezes (or the user froze)."""
        frozen, _ = self.selection(trainer.lightning_module, freezer)
        done = {id(p) for p in frozen} | freezer.user_frozen
        return freezer.leading_blocks(lambda p: id(p) in done, len(freezer) - 1)

    def on_fit_start(self, trainer, pl_module) -> None:
        self._pending = None  # the selection depends on nothing but the configuration
        self.rebind(pl_module)
        frozen, _ = self.selection(pl_module, self.freezer)
        self.freezer.freeze_parameters(frozen, trainer.optimizers)

    def prefix_at(self, step: int) -> int:
        return 0

    def after_optimizer_step(self, trainer, pl_module, step: int) -> None:
        pass

    def state_dict(self) -> dict[str, Any]:
        return {} if self.freezer is None else {"frozen_blocks": sorted(self.freezer.frozen_blocks)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        pass  # re-derived from the configuration in on_fit_start
