"""The tasks' learning-rate scheduler, tolerant of parameter groups added during training.

``torch.optim.lr_scheduler.LambdaLR`` zips its per-group lambdas with the optimizer's groups
strictly, so a callback that adds a group mid-run (Lightning's ``BackboneFinetuning`` adds the
unfrozen backbone) crashes it at the next step. Here the groups the scheduler was built with follow
its schedule exactly as ``LambdaLR`` would; a group added later keeps whatever learning rate its
owner sets, because the callback that added it also schedules it.
"""

from __future__ import annotations

from torch.optim.lr_scheduler import LambdaLR


class OwnGroupsLambdaLR(LambdaLR):
    """``LambdaLR`` over the groups present at construction; later groups are left to their owner."""

    def get_lr(self) -> list[float]:
        own = super().get_lr()
        added = self.optimizer.param_groups[len(own) :]
        return list(own) + [group["lr"] for group in added]
