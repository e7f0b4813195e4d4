"""What the prefix-freezing techniques share: blocks, the frozen set in the checkpoint, re-freezing
on resume, metrics, optional activation caching of the frozen prefix (``activation_cache.py``). A
subclass only says how many leading blocks are frozen after step t."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import torch
from pydantic import Field

from lightning_eff import PreflightError, Technique, TechniqueConfig
from lightning_eff.config_types import Patterns
from lightning_eff.module import batch_sample_indices
from lightning_eff.plan import strategy_kind
from lightning_eff.schedule import training_progress
from lightning_eff.technique import FSDP2_TESTED

from .activation_cache import (
    ActivationCache,
    dataset_size,
    declared_static,
    estimate_bytes,
    first_loader,
    format_bytes,
    index_sampler,
    probe_prefix_outputs,
    stochastic_modules,
)
from .backward_timer import BackwardTimer
from .blocks import Blocks, block_problems, find_blocks
from .freezer import BlockFreezer

#: the techniques that each own a schedule over the same prefix: two of them would fight over it
PREFIX_SCHEDULES = ("progressive_freezing", "freeze_out", "adaptive_freezing")
#: FSDP2 keeps one parameter per tensor (DTensors), so param groups and requires_grad work as under
#: DDP; the older FSDPStrategy and DeepSpeed flatten parameters, which removing some would break
STRATEGIES = FSDP2_TESTED


class FreezingConfig(TechniqueConfig):
    blocks: Patterns = Field(
        (),
        description="glob patterns of the modules that are the blocks, in forward order (empty: found automatically)",
    )
    cache_activations: bool = Field(
        False,
        description="store the frozen prefix's output per training sample and feed it to the first trained block on "
        "later visits instead of running the prefix (exact; needs static data, sample indices, a deterministic prefix)",
    )
    static_data: bool = Field(
        False,
        description="assert that every training sample's tensors are identical every epoch (no augmentation, random "
        "crops or masking); cache_activations needs it unless the data module declares static_data",
    )
    cache_max_bytes: int = Field(
        2**30, gt=0, description="most memory the activation cache may take; preflight refuses a larger estimate"
    )
    cache_on: Literal["cpu", "device"] = Field(
        "cpu", description="where cached activations live: host memory, or the training device (no copies, uses its memory)"
    )

CACHE_INDEX_FIX = (
    "sample through lightning_eff.plugins.data.InfoBatchSampler (wrap the loader with info_batch_dataloader(loader)) "
    "or implement sample_indices(batch) -> LongTensor on the LightningModule"
)


def train_loader(trainer) -> Any:
    """The training DataLoader (the first one), before Lightning has loaded it (preflight) or after."""
    try:
        loaders = trainer.train_dataloader
    except AttributeError:
        loaders = None
    if loaders is None:
        source = getattr(trainer.fit_loop, "_data_source", None)
        try:
            loaders = source.dataloader() if source is not None and source.is_defined() else None
        except Exception:  # noqa: BLE001 - no loader yet: the checks that need it report it
            loaders = None
    return first_loader(loaders)


class FreezingTechnique(Technique):
    """Base of the freezing techniques: finds the blocks, keeps the frozen set, reports metrics."""

    phase = "optimizer"
    find_unused_parameters = True  # frozen parameters stop receiving gradients: DDP must know
    supported_strategies: ClassVar[tuple[str, ...] | None] = STRATEGIES

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.freezer: BlockFreezer | None = None
        self.total_steps = 0.0
        self.timer = BackwardTimer()
        self._pending: dict[str, Any] | None = None
        self._last_step = -1
        self.cache: ActivationCache | None = None
        self.cache_limit = 0
        self._index_source: tuple[Any, int] | None = None
        self.block_names: tuple[str, ...] = ()  # as found at preflight: shown in the plan

    # -- blocks and preflight ------------------------------------------------------------------------

    def find_blocks(self, pl_module) -> Blocks:
        blocks = find_blocks(pl_module, self.config.blocks)
        self.block_names = blocks.names
        return blocks

    def __repr__(self) -> str:
        # The plan printed at fit start (after preflight found the blocks) shows the freezing order.
        if not self.block_names:
            return super().__repr__()
        return f"{super().__repr__()} blocks in freezing order: {', '.join(self.block_names)}"

    def validate(self, trainer, pl_module) -> list[str]:
        blocks = self.find_blocks(pl_module)
        problems = block_problems(pl_module, blocks)
        if problems:
            return problems
        freezer = BlockFreezer(pl_module, blocks)
        if freezer.trainable_after(()) == 0:
            return [
                "every parameter of the model is already frozen (requires_grad=False): there is nothing to train"
            ]
        problems = problems + self.schedule_problems(trainer, freezer)
        return problems + (self.cache_problems(trainer, pl_module, freezer) if not problems else [])

    def schedule_problems(self, trainer, freezer: BlockFreezer) -> list[str]:
        """Problems of this technique's schedule on this model and run (subclasses)."""
        return []

    def most_frozen_prefix(self, trainer, freezer: BlockFreezer) -> int:
        """The longest prefix of blocks this technique can freeze in this run (subclasses narrow it)."""
        return len(freezer) - 1

    def cache_range(self, trainer, freezer: BlockFreezer) -> int:
        """How many leading blocks activation caching may ever skip: those the schedule can freeze and
        those the user froze before training, never the last block."""
        user = freezer.leading_blocks(lambda p: not p.requires_grad, len(freezer))
        return min(len(freezer) - 1, max(self.most_frozen_prefix(trainer, freezer), user))

    def cache_problems(self, trainer, pl_module, freezer: BlockFreezer) -> list[str]:
        """Why activation caching would not be exact (or would not fit) on this model and data."""
        c = self.config
        if not c.cache_activations:
            return []
        problems = []
        if strategy_kind(trainer.strategy) == "fsdp2":
            problems.append(
                "cache_activations=True cannot run under FSDP2: a cache hit skips the frozen blocks' forward, and with "
                "it their parameter all-gathers, on one rank but not on the others (the collectives would hang); "
                "turn cache_activations off, or use strategy='ddp'"
            )
        limit, names = self.cache_range(trainer, freezer), freezer.blocks.names
        if limit == 0:
            return ["cache_activations=True but no leading block is ever frozen in this run: there is nothing to cache; turn it off"]
        noisy = stochastic_modules(pl_module, names, limit)
        if noisy:
            more = f" and {len(noisy) - 4} more" if len(noisy) > 4 else ""
            problems.append(
                f"cache_activations=True needs a deterministic prefix, but the blocks that can freeze ({names[0]} .. "
                f"{names[limit - 1]}) hold stochastic modules: {', '.join(noisy[:4])}{more}: set their dropout to 0 "
                "(for transformers: hidden_dropout_prob=0, attention_probs_dropout_prob=0 or the model's *_dropout), "
                "keep batch-statistics normalisation out of the prefix, or turn cache_activations off"
            )
        loader = train_loader(trainer)
        declared = declared_static(trainer, loader)
        if declared is False:
            problems.append(
                "cache_activations=True needs static training data, but the data module declares static_data=False "
                "(augmented or re-drawn samples): turn cache_activations off"
            )
        elif declared is None and not c.static_data:
            problems.append(
                "cache_activations=True needs static training data (each sample's tensors identical every epoch: no "
                "augmentation, random crops or masking): assert it with static_data=True, or set static_data = True "
                "on the data module"
            )
        has_indices = callable(getattr(pl_module, "sample_indices", None)) or index_sampler(loader) is not None
        if not has_indices:
            problems.append(
                f"cache_activations=True keys the cache by sample index, but the batches carry none: {CACHE_INDEX_FIX}"
            )
        size = dataset_size(loader)
        if has_indices and size is None:
            problems.append(
                "cache_activations=True needs a map-style training dataset with a length (the cache holds one entry per sample)"
            )
        selectors = [t.name for t in trainer.callbacks if isinstance(t, Technique) and t.selects_batches]
        if selectors:
            problems.append(
                f"cache_activations=True cannot be combined with {', '.join(selectors)}: a batch selector runs the model "
                "on part of the batch, which the cache cannot map to sample indices; drop one of them"
            )
        if not problems and size:
            probe = probe_prefix_outputs(pl_module, loader, freezer.blocks.modules[:limit])
            if probe is not None:
                estimate = estimate_bytes(probe, size)
                if estimate > c.cache_max_bytes:
                    problems.append(
                        f"the activation cache would need about {format_bytes(estimate)} ({size} samples x "
                        f"{format_bytes(max(b for b, _ in probe))} at the largest cut) but cache_max_bytes={c.cache_max_bytes} "
                        f"({format_bytes(c.cache_max_bytes)}): raise cache_max_bytes or turn cache_activations off"
                    )
        return problems

    @staticmethod
    def everything_frozen(freezer: BlockFreezer, count: int) -> bool:
        return freezer.trainable_after(range(count)) == 0

    # -- Lightning hooks -----------------------------------------------------------------------------

    def setup(self, trainer, pl_module, stage: str) -> None:
        if stage != "fit":
            return
        self.freezer = BlockFreezer(pl_module, self.find_blocks(pl_module))
        self.total_steps = training_progress(trainer, need_total=False)[1]
        self.prepare(trainer, pl_module)
        if self.config.cache_activations:
            self.cache_limit = self.cache_range(trainer, self.freezer)

    def prepare(self, trainer, pl_module) -> None:
        """Resolve the schedule once the blocks and the run length are known (subclasses)."""

    def rebind(self, pl_module) -> None:
        """Look the parameters up again: FSDP2's ``fully_shard`` in ``configure_model`` (after
        ``setup``) replaced them by new DTensor parameters."""
        self.freezer = self.freezer.rebound(pl_module)

    def on_fit_start(self, trainer, pl_module) -> None:
        self.rebind(pl_module)
        # Optimizers exist now; their checkpointed state is loaded right after this hook, and needs
        # the param groups to have the structure they had when saved: re-freeze the saved set.
        if self._pending is not None:
            state, self._pending = self._pending, None
            self.freezer.freeze_blocks(state["frozen_blocks"], trainer.optimizers)
            self.load_extra_state(state.get("extra", {}))
        else:
            self.freeze_to(self.prefix_at(0), trainer)

    # -- activation caching (derived state: rebuilt on every fit, never checkpointed) -----------------

    def on_train_start(self, trainer, pl_module) -> None:
        if not self.config.cache_activations:
            return
        loader = self._find_index_source(trainer, pl_module)
        device = pl_module.device if self.config.cache_on == "device" else torch.device("cpu")
        self.cache = ActivationCache(
            self.freezer.blocks.modules,
            self.freezer.blocks.names,
            samples=dataset_size(loader),
            max_bytes=self.config.cache_max_bytes,
            storage_device=device,
            owner=self.name,
        )

    def _find_index_source(self, trainer, pl_module) -> Any:
        """The training loader, and its index-recording sampler unless the module gives indices itself
        (looked up again every epoch: ``reload_dataloaders_every_n_epochs`` builds new samplers)."""
        loader = train_loader(trainer)
        self._index_source = None
        if not callable(getattr(pl_module, "sample_indices", None)):
            sampler = index_sampler(loader)
            if sampler is None:
                raise PreflightError(
                    [f"{self.name}: cache_activations=True: the training DataLoader's sampler does not record sample indices: {CACHE_INDEX_FIX}"]
                )
            self._index_source = (sampler, loader.batch_size)
        return loader

    def cacheable_prefix(self) -> int:
        """Leading blocks that hold no trainable parameter (within the range preflight checked)."""
        return self.freezer.leading_blocks(lambda p: not p.requires_grad, self.cache_limit)

    def batch_indices(self, trainer, pl_module, batch, batch_idx: int) -> torch.Tensor:
        own = getattr(pl_module, "sample_indices", None)
        if callable(own):
            return torch.as_tensor(own(batch), dtype=torch.long).flatten()
        sampler, batch_size = self._index_source
        return batch_sample_indices(sampler, batch_idx, batch_size, batch)

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if self.cache is not None:
            self._find_index_source(trainer, pl_module)
            self.cache.new_epoch(self.cacheable_prefix())

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.cache is not None:
            self.cache.raise_target_from_zero(self.cacheable_prefix())
            self.cache.begin_batch(self.batch_indices(trainer, pl_module, batch, batch_idx), pl_module.device)

    def on_train_end(self, trainer, pl_module) -> None:
        if self.cache is not None:
            self.cache.end_batch(failed=True)
            self.cache.release()

    def on_exception(self, trainer, pl_module, exception) -> None:
        if self.cache is not None:
            self.cache.end_batch(failed=True)

    def on_before_backward(self, trainer, pl_module, loss) -> None:
        if self.cache is not None:
            self.cache.check_backward(loss)
        self.timer.start(trainer.global_step, pl_module.device)

    def on_after_backward(self, trainer, pl_module) -> None:
        self.timer.stop(pl_module.device, anything_frozen=bool(self.freezer.frozen_params))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.cache is not None:
            self.cache.end_batch()  # before a new freeze: the cut was chosen at batch start
        # Once per optimizer step (several batches share one step under gradient accumulation).
        step = trainer.global_step
        if step != self._last_step:
            self._last_step = step
            self.after_optimizer_step(trainer, pl_module, step)

    def after_optimizer_step(self, trainer, pl_module, step: int) -> None:
        if step < self.total_steps:  # after the last step nothing trains: leave the last trained set
            self.freeze_to(self.prefix_at(step), trainer)

    def prefix_at(self, step: int) -> int:
        """How many leading blocks are frozen after optimizer step ``step`` (subclasses)."""
        raise NotImplementedError

    def freeze_to(self, count: int, trainer) -> None:
        if count > self.freezer.prefix_length():
            self.freezer.freeze_prefix(count, trainer.optimizers)
            self.timer.frozen_set_changed()

    # -- metrics and state ---------------------------------------------------------------------------

    def metrics(self) -> dict[str, float]:
        if self.freezer is None:
            return {}
        out = {**self.freezer.metrics(), **self.timer.metrics()}
        if self.cache is not None:
            out.update(self.cache.metrics())
        return out

    def savings(self) -> dict[str, float]:
        out = self.metrics()
        return {k: out[k] for k in ("frozen_param_fraction", "backward_time_saved") if k in out}

    def state_dict(self) -> dict[str, Any]:
        if self.freezer is None:
            return {}
        return {
            "block_names": list(self.freezer.blocks.names),
            "frozen_blocks": sorted(self.freezer.frozen_blocks),
            "extra": self.extra_state(),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if not state_dict:
            return
        names = tuple(state_dict["block_names"])
        if self.freezer is not None and names != self.freezer.blocks.names:
            raise ValueError(
                f"{type(self).__name__}: the checkpoint was written with blocks {list(names)[:4]}... but this model "
                f"has {list(self.freezer.blocks.names)[:4]}...: resume with the same model and `blocks` option"
            )
        self._pending = state_dict  # applied in on_fit_start, once the optimizers exist

    def extra_state(self) -> dict[str, Any]:
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        pass
