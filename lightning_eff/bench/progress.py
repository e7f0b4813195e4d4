"""Lightning's tqdm bar counting optimizer steps of the whole run, not batches of one epoch.

The bench trains for ``max_steps`` across many short epochs (``max_epochs=-1``), where the stock bar
restarts every epoch and shows "Epoch 7/-2". With an epochs budget the total is Lightning's estimate.
"""

from __future__ import annotations

from typing import Any

from lightning.pytorch.callbacks import TQDMProgressBar


class StepProgressBar(TQDMProgressBar):
    def __init__(self, label: str) -> None:
        super().__init__(leave=False)
        self.label = label

    def init_train_tqdm(self):
        bar = super().init_train_tqdm()
        bar.set_description(self.label)
        return bar

    def on_train_epoch_start(self, trainer, *_: Any) -> None:
        bar = self.train_progress_bar
        # An epochs budget has max_steps=-1: Lightning's estimate (full epochs) is the best total known.
        total = trainer.max_steps if trainer.max_steps > 0 else int(trainer.estimated_stepping_batches)
        if trainer.current_epoch == 0 or bar.total != total:
            bar.reset(total=total)
            bar.initial = 0
        bar.set_description(self.label)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        bar = self.train_progress_bar
        if bar is not None and not bar.disable and self._should_update(trainer.global_step, bar.total):
            bar.n = trainer.global_step
            bar.set_postfix(self.get_metrics(trainer, pl_module))
            bar.refresh()

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        pass  # one bar for the whole run: nothing to close between epochs

    # Validation is short and excluded from the timing; its bars would only interleave with the train bar.
    def on_sanity_check_start(self, *_: Any) -> None:
        pass

    def on_sanity_check_end(self, *_: Any) -> None:
        pass

    def on_validation_start(self, *_: Any) -> None:
        pass

    def on_validation_batch_start(self, *_: Any, **__: Any) -> None:
        pass

    def on_validation_batch_end(self, *_: Any, **__: Any) -> None:
        pass

    def on_validation_end(self, *_: Any) -> None:
        pass
