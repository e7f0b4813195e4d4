"""What the prefix-freezing techniques share: blocks, the frozen set in the checkpoint, re-freezing
on resume, metrics. A subclass only says how many leading blocks are frozen after step t."""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import Field

from lightning_eff import Technique, TechniqueConfig
from lightning_eff.schedule import training_progress

from .backward_timer import BackwardTimer
from .blocks import Blocks, block_problems, find_blocks
from .freezer import BlockFreezer

#: the techniques that each own a schedule over the same prefix: two of them would fight over it
PREFIX_SCHEDULES = ("progressive_freezing", "freeze_out", "adaptive_freezing")
#: parameter groups must hold real parameters: sharded strategies flatten them
STRATEGIES = ("single_device", "ddp")


class FreezingConfig(TechniqueConfig):
    blocks: tuple[str, ...] = Field(
        (),
        description="glob patterns of the modules that are the blocks, in forward order (empty: found automatically)",
    )


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

    # -- blocks and preflight ------------------------------------------------------------------------

    def find_blocks(self, pl_module) -> Blocks:
        return find_blocks(pl_module, self.config.blocks)

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
        return problems + self.schedule_problems(trainer, freezer)

    def schedule_problems(self, trainer, freezer: BlockFreezer) -> list[str]:
        """Problems of this technique's schedule on this model and run (subclasses)."""
        return []

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

    def prepare(self, trainer, pl_module) -> None:
        """Resolve the schedule once the blocks and the run length are known (subclasses)."""

    def on_fit_start(self, trainer, pl_module) -> None:
        # Optimizers exist now; their checkpointed state is loaded right after this hook, and needs
        # the param groups to have the structure they had when saved: re-freeze the saved set.
        if self._pending is not None:
            state, self._pending = self._pending, None
            self.freezer.freeze_blocks(state["frozen_blocks"], trainer.optimizers)
            self.load_extra_state(state.get("extra", {}))
        else:
            self.freeze_to(self.prefix_at(0), trainer)

    def on_before_backward(self, trainer, pl_module, loss) -> None:
        self.timer.start(trainer.global_step, pl_module.device)

    def on_after_backward(self, trainer, pl_module) -> None:
        self.timer.stop(pl_module.device, anything_frozen=bool(self.freezer.frozen_params))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
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
        return {**self.freezer.metrics(), **self.timer.metrics()}

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
