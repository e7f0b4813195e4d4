"""The tasks' learning-rate scheduler, tolerant of parameter groups added during training.

``torch.optim.lr_scheduler.LambdaLR`` zips its per-group lambdas with the optimizer's groups
strictly, so a callback that adds a group mid-run (Lightning's ``BackboneFinetuning`` adds the
unfrozen backbone) crashes it at the next step. Here the groups the scheduler was built with follow
its schedule exactly as ``LambdaLR`` would; a group added later keeps whatever learning rate its
owner sets, because the callback that added it also schedules it.

Under an epoch budget the schedule follows the epochs, not the steps (:class:`EpochPosition`): a
technique that shortens epochs (InfoBatch) anneals to 0 at the end of its last epoch, as the InfoBatch
authors ask of an epoch-based schedule, instead of stopping part-way down a schedule sized for full
epochs. Full epochs give exactly the step-based schedule.
"""

from __future__ import annotations

from collections.abc import Callable

from torch.optim.lr_scheduler import LambdaLR


class OwnGroupsLambdaLR(LambdaLR):
    """``LambdaLR`` over the groups present at construction; later groups are left to their owner."""

    def get_lr(self) -> list[float]:
        own = super().get_lr()
        added = self.optimizer.param_groups[len(own) :]
        return list(own) + [group["lr"] for group in added]


class EpochPosition:
    """Where a run stands in its schedule, counted in steps of full epochs.

    Step ``s`` of a step budget is position ``s``. Under an epoch budget, batch ``b`` (1-based) of
    epoch ``e`` is ``e * full + b * full / this``, ``full`` being the batches of a full epoch and
    ``this`` those of the current one: a shortened epoch spans a full epoch's share of the schedule.
    For full epochs that is ``s`` again, as an integer, so a baseline's learning rates do not change.
    """

    def __init__(self, trainer, full_batches: int) -> None:
        self.trainer, self.full = trainer, full_batches
        self._lengths: dict[int, int] = {}  # epoch -> its batches (a sampler's len can cost O(dataset))

    @classmethod
    def for_trainer(cls, trainer, total_steps: int) -> Callable[[int], float]:
        """The position function for this trainer: steps unless the budget is whole epochs of one
        optimizer step per batch."""
        epochs = trainer.max_epochs or 0
        if trainer.max_steps not in (-1, None) or epochs < 1 or trainer.accumulate_grad_batches != 1 or total_steps % epochs:
            return lambda step: step
        return cls(trainer, total_steps // epochs)

    def _batches_this_epoch(self, epoch: int) -> int:
        if epoch not in self._lengths:
            try:
                self._lengths[epoch] = len(self.trainer.train_dataloader)
            except TypeError:  # no length (an iterable dataset): full epochs assumed
                self._lengths[epoch] = self.full
        return self._lengths[epoch]

    def __call__(self, step: int) -> float:
        loop = getattr(self.trainer, "fit_loop", None)
        if loop is None or step == 0 or self.trainer.train_dataloader is None:
            return step
        # Read from the loop's progress (restored on resume), so no state of ours has to be checkpointed.
        epoch, this = self.trainer.current_epoch, self._batches_this_epoch(self.trainer.current_epoch)
        done = loop.epoch_loop.batch_progress.current.processed  # batches of this epoch, the current one included
        return epoch * self.full + (done if this == self.full else done * self.full / this)
