"""Models, recorders and factories shared by the freezing tests (module level: DDP pickles them)."""

import lightning.pytorch as pl
import torch

from lightning_eff.testing import TinyClassifier, TinyDataModule, preflight_problems, quiet_trainer_kwargs

STEPS_PER_EPOCH = TinyDataModule().steps_per_epoch  # 8


class AdamWClassifier(TinyClassifier):
    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=0.01, weight_decay=0.1)


class KeepZeroGradsClassifier(TinyClassifier):
    """zero_grad(set_to_none=False): a parameter left in a param group would get zero gradients,
    and momentum and weight decay would still move it."""

    def optimizer_zero_grad(self, epoch, batch_idx, optimizer):
        optimizer.zero_grad(set_to_none=False)


class RecordFrozen(pl.Callback):
    """At the start of each batch (after the previous step's hub work): which parameters are frozen,
    the weights, and what the optimizers hold."""

    def __init__(self):
        self.frozen, self.weights, self.group_ids, self.state_ids = [], [], [], []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.record(trainer, pl_module)

    def on_train_end(self, trainer, pl_module):
        self.record(trainer, pl_module)

    def record(self, trainer, pl_module):
        self.frozen.append({n for n, p in pl_module.named_parameters() if not p.requires_grad})
        self.weights.append({n: p.detach().clone() for n, p in pl_module.named_parameters()})
        optimizer = trainer.optimizers[0]
        self.group_ids.append({id(p) for g in optimizer.param_groups for p in g["params"]})
        self.state_ids.append({id(p) for p in optimizer.state})


def fit(techniques, steps=24, module_cls=TinyClassifier, callbacks=(), **kwargs):
    pl.seed_everything(0)
    module = module_cls()
    trainer = pl.Trainer(
        **quiet_trainer_kwargs(max_steps=steps, **kwargs), callbacks=[*techniques, *callbacks]
    )
    trainer.fit(module, datamodule=TinyDataModule())
    return trainer, module


def assert_frozen_weights_never_move(recorder, module):
    """From the step a parameter is first seen frozen on, its value is bit-identical, and no
    optimizer group or state holds it."""
    params = dict(module.named_parameters())
    checked = 0
    for i, frozen in enumerate(recorder.frozen):
        for name in frozen:
            first = next(j for j, f in enumerate(recorder.frozen) if name in f)
            assert torch.equal(recorder.weights[i][name], recorder.weights[first][name]), (
                f"{name} moved after freezing"
            )
            assert id(params[name]) not in recorder.group_ids[i] | recorder.state_ids[i], (
                f"optimizer still holds {name}"
            )
            checked += 1
    return checked


def preflight_problems_for_run(techniques, max_steps, module=None, **trainer_kwargs):
    """Preflight judged against a run of ``max_steps`` (schedules are checked against its length)."""
    return preflight_problems(techniques, module=module, max_steps=max_steps, **trainer_kwargs)
