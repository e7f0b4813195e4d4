"""NMSparsity: SR-STE training, the N:M pattern, checkpoints, resume, DDP, bad input."""

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.plugins import MixedPrecision
from torch.nn import functional as F

from lightning_eff import ConfigError
from lightning_eff.kernels.nm_sparsity import nm_mask_reference
from lightning_eff.plugins.pruning import NMSparsity, nm_sparse_ste
from lightning_eff.plugins.pruning.nm import flow_factor, semi_structured_unsupported
from lightning_eff.recipe import load_recipe
from lightning_eff.testing import (
    TinyClassifier,
    TinyDataModule,
    assert_ranks_identical,
    assert_resume_equivalent,
    preflight_problems,
    quiet_trainer_kwargs,
    run_ddp,
)


def fit(callbacks, steps=16, module_cls=TinyClassifier, **kwargs):
    pl.seed_everything(0)
    module = module_cls()
    trainer = pl.Trainer(**quiet_trainer_kwargs(max_steps=steps, **kwargs), callbacks=list(callbacks))
    trainer.fit(module, datamodule=TinyDataModule())
    return trainer, module


def kept_per_group(weight, m=4):
    return (weight.reshape(-1, m) != 0).sum(dim=1)


class FunctionalSRSTE(TinyClassifier):
    """The paper's formulation: every forward re-derives the mask; backward adds the decay."""

    decay = 0.01

    def forward(self, x):
        for block in self.blocks:
            x = F.relu(F.linear(x, nm_sparse_ste(block[0].weight, 2, 4, self.decay), block[0].bias))
        return F.linear(x, nm_sparse_ste(self.head.weight, 2, 4, self.decay), self.head.bias)


def test_callback_trains_exactly_like_the_functional_sr_ste():
    technique = NMSparsity(decay=FunctionalSRSTE.decay, make_permanent=False)
    fit([technique])
    _, reference = fit([], module_cls=FunctionalSRSTE)
    for name in technique.masked.names():
        dense = technique.masked.weight(name) + technique.hidden[name]
        ref = dict(reference.named_modules())[name].weight
        assert torch.equal(dense, ref), name  # bit for bit, momentum and weight decay included
        assert torch.equal(technique.masked.mask(name), nm_mask_reference(ref, 2, 4))


def test_parameters_are_n_m_sparse_and_the_hidden_values_restore_the_dense_weights():
    technique = NMSparsity(n=1, m=4, make_permanent=False)
    fit([technique], steps=8)
    for name in technique.masked.names():
        weight = technique.masked.weight(name)
        assert (kept_per_group(weight) <= 1).all() and kept_per_group(weight).float().mean() > 0.9
        hidden = technique.hidden[name]
        assert ((hidden != 0) & (weight != 0)).sum() == 0  # disjoint supports
        assert ((hidden != 0) == ~technique.masked.mask(name)).float().mean() > 0.99
    assert technique.metrics()["sparsity"] == 0.75


class MaskLog(pl.Callback):
    def __init__(self):
        self.masks = []

    def on_train_batch_start(self, trainer, pl_module, *args):
        self.masks.append(pl_module.blocks[1][0].weight_mask.clone())


def test_masks_change_only_every_update_every_steps():
    log = MaskLog()
    technique = NMSparsity(update_every=4, decay=0.0, make_permanent=False)
    fit([technique, log], steps=16)
    # log.masks[i]: the mask of the forward after i optimizer steps; recomputed after steps 4, 8, 12, 16
    changed_at = [i for i in range(1, 16) if not torch.equal(log.masks[i], log.masks[i - 1])]
    assert changed_at and set(changed_at) <= {4, 8, 12}
    assert technique.last_update_step == 16


def test_start_keeps_the_model_dense_until_then():
    log = MaskLog()
    technique = NMSparsity(start=5, make_permanent=False)
    fit([technique, log], steps=8)
    assert all(m.all() for m in log.masks[:5]) and not log.masks[5].all()


def test_progressive_gradient_flow_factor():
    assert [flow_factor(t, 2, 6) for t in (0, 2, 3, 4, 6, 9)] == [1.0, 1.0, 0.75, 0.5, 0.0, 0.0]


class PrunedGradSpy(TinyClassifier):
    """Sees the gradient the optimizer gets (the module hook runs after the callbacks')."""

    def on_before_optimizer_step(self, optimizer):
        layer = self.blocks[1][0]
        if self.trainer.global_step >= 4:
            pruned = ~layer.weight_mask
            self.exact = getattr(self, "exact", True) and torch.equal(layer.weight.grad[pruned], (0.01 * layer.weight)[pruned])


def test_after_the_flow_decay_pruned_weights_get_only_the_sr_ste_decay():
    technique = NMSparsity(decay=0.01, gradient_flow_decay=True, flow_decay_start=1, flow_decay_end=4, make_permanent=False)
    _, module = fit([technique], steps=8, module_cls=PrunedGradSpy)
    assert module.exact


def test_make_permanent_leaves_a_plain_n_m_model_and_checkpoints_load(tmp_path):
    technique = NMSparsity()
    trainer, module = fit([technique], steps=8)
    assert not any(name.endswith("weight_mask") for name, _ in module.named_buffers()) and technique.hidden == {}
    trainer.save_checkpoint(tmp_path / "nm.ckpt")
    loaded = TinyClassifier.load_from_checkpoint(tmp_path / "nm.ckpt")
    assert (kept_per_group(loaded.blocks[2][0].weight) == 2).all()


def test_export_is_skipped_with_the_reason_where_semi_structured_is_unsupported():
    assert semi_structured_unsupported(torch.zeros(64, 64), 2, 4) == "the weight is not on a CUDA device"
    assert semi_structured_unsupported(torch.zeros(64, 64), 1, 4) == "1:4 is not 2:4"
    technique = NMSparsity(export_semi_structured=True)
    with pytest.warns(UserWarning, match="4 weight\\(s\\) kept dense: the weight is not on a CUDA device"):
        fit([technique], steps=2)
    assert technique.metrics()["semi_structured_exported"] == 0.0


def test_a_step_skipped_by_the_fp16_scaler_changes_nothing():
    class InfAt(pl.Callback):
        def on_after_backward(self, trainer, pl_module):
            if trainer.global_step == 3:
                pl_module.head.weight.grad[0, 0] = float("inf")
                self.before = (pl_module.head.weight.detach().clone(), technique.hidden["head"].clone())

        def on_train_batch_start(self, trainer, pl_module, *args):
            if trainer.global_step == 4:
                self.after = (pl_module.head.weight.detach().clone(), technique.hidden["head"].clone())

    spy = InfAt()
    technique = NMSparsity(update_every=2, make_permanent=False)
    fit([technique, spy], steps=6, plugins=[MixedPrecision("16-mixed", "cpu", scaler=torch.amp.GradScaler("cpu"))])
    assert torch.equal(spy.before[0], spy.after[0]) and torch.equal(spy.before[1], spy.after[1])
    assert (kept_per_group(technique.masked.weight("head")) <= 2).all()


# --- resume and DDP -------------------------------------------------------------------------------


def nm_sparsity_techniques():
    return [NMSparsity(update_every=3, start=2, decay=0.01, gradient_flow_decay=True, flow_decay_start=4, flow_decay_end=12)]


def test_resume_is_exact(tmp_path):
    states = assert_resume_equivalent(TinyClassifier, TinyDataModule, nm_sparsity_techniques, half_steps=8, tmp_path=tmp_path)
    (state,) = states.values()
    assert state["active"] and state["last_update_step"] == 14


@pytest.mark.ddp
def test_ddp_ranks_hold_identical_masks_and_hidden_weights(tmp_path):
    states = run_ddp(TinyClassifier, TinyDataModule, nm_sparsity_techniques, max_steps=6, tmp_path=tmp_path)
    assert_ranks_identical(states)
    (state,) = states[0]["techniques"].values()
    assert state["last_update_step"] == 5 and state["masks"]


# --- bad input ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "options, message",
    [
        ({"n": 4, "m": 4}, "n=4 must be smaller than m=4"),
        ({"n": 0}, "n=0: Input should be greater than or equal to 1"),
        ({"decay": -1.0}, "decay=-1.0"),
        ({"update_every": 0}, "update_every must be positive"),
        ({"start": 1.5}, "is read as a fraction of the run and must be in [0, 1]"),
    ],
)
def test_bad_options_fail_at_construction(options, message):
    with pytest.raises(ConfigError, match="NMSparsity") as info:
        NMSparsity.from_options(**options)
    assert message in str(info.value)


def test_preflight_names_layers_whose_inputs_are_not_a_multiple_of_m_and_empty_patterns():
    problems = preflight_problems([NMSparsity(include_names=["blocks.*", "mlp.*"])], module=TinyClassifier(features=18),
                                  data=TinyDataModule(features=18))
    assert any("module 'blocks.0.0' has 18 input features, not a multiple of m=4" in p for p in problems)
    assert any("include_names pattern 'mlp.*' matches no Linear module" in p for p in problems)
    assert not any("module 'blocks.1.0'" in p for p in problems)
    assert preflight_problems([NMSparsity(exclude_names=["blocks.0.0"])], module=TinyClassifier(features=18),
                              data=TinyDataModule(features=18)) == []


def test_shipped_recipe_builds_2_4_sparsity():
    (technique,) = load_recipe("nm_sparsity").build()
    assert isinstance(technique, NMSparsity) and (technique.config.n, technique.config.m) == (2, 4)
