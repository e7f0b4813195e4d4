"""MixedPrecision: Trainer configuration, the fp32 policy, the fp32 finish, fp16 overflows, resume, DDP,
preflight. On CPU, Lightning swaps 16-mixed for bf16-mixed; its AMP plugin with a CPU GradScaler is
the real fp16 path, and the technique asks for it on CPU."""

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.plugins import MixedPrecision as AmpPlugin
from precision_helpers import FreshScalerAmp, NormClassifier

from lightning_eff.plugins.precision import MixedPrecision
from lightning_eff.plugins.precision.policy import (
    fp32_policy_modules,
    keep_in_fp32,
    release_fp32,
    unmatched_patterns,
)
from lightning_eff.recipe import configure_trainer, load_recipe, validate_techniques
from lightning_eff.testing import (
    TinyDataModule,
    assert_ranks_identical,
    assert_resume_equivalent,
    preflight_problems,
    quiet_trainer_kwargs,
    run_ddp,
)

# --- the policy (pure) ----------------------------------------------------------------------------


def test_policy_matches_norm_types_and_name_patterns_outermost_only():
    model = NormClassifier()
    chosen = fp32_policy_modules(model, ["head"], ["*Norm"])
    assert sorted(chosen) == ["head", "norm"]
    assert fp32_policy_modules(model, ["blocks.*"], []).keys() == {"blocks.0", "blocks.1", "blocks.2"}
    assert unmatched_patterns(model, ["lm_head", "head"], ["*Router"]) == ["name:lm_head", "type:*Router"]


def test_a_module_kept_in_fp32_runs_in_fp32_under_autocast():
    model = NormClassifier()
    x = torch.randn(4, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert model.head(model.blocks(x)).dtype == torch.bfloat16
    keep_in_fp32(model.head)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert model.head(model.blocks(x)).dtype == torch.float32
    release_fp32(model.head)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert model.head(model.blocks(x)).dtype == torch.bfloat16


# --- configuration --------------------------------------------------------------------------------


def test_configure_trainer_sets_the_precision_and_a_cpu_grad_scaler_for_fp16():
    kwargs = configure_trainer({"accelerator": "gpu"}, [MixedPrecision("bf16-mixed")])
    assert kwargs["precision"] == "bf16-mixed"
    kwargs = configure_trainer({"accelerator": "cpu", "precision": "32-true"}, [MixedPrecision("16-mixed")])
    assert "precision" not in kwargs
    (plugin,) = kwargs["plugins"]
    assert isinstance(plugin, AmpPlugin) and plugin.precision == "16-mixed" and plugin.scaler is not None
    assert validate_techniques([MixedPrecision("16-mixed")], kwargs) == []


def test_shipped_recipe_sets_bf16():
    recipe = load_recipe("mixed_precision")
    techniques = recipe.build()
    assert recipe.trainer_kwargs(techniques, base={"accelerator": "cpu"})["precision"] == "bf16-mixed"
    assert recipe.validate() == []


# --- training -------------------------------------------------------------------------------------


def fit(technique, steps=8, callbacks=(), **kwargs):
    pl.seed_everything(0)
    module = NormClassifier()
    trainer = pl.Trainer(**quiet_trainer_kwargs(max_steps=steps, **kwargs), callbacks=[technique, *callbacks])
    trainer.fit(module, datamodule=TinyDataModule())
    return trainer, module


def test_policy_is_verified_on_the_first_step_and_linears_run_in_bf16():
    technique = MixedPrecision("bf16-mixed", fp32_modules=["head"])
    fit(technique, steps=3, precision="bf16-mixed")
    metrics = technique.metrics()
    assert metrics["fp32_policy_verified"] == 1.0
    assert metrics["fp32_modules"] == 2  # the LayerNorm (default types) and the head
    assert metrics["low_precision_linear_fraction"] == pytest.approx(3 / 4)  # the head stayed fp32
    assert metrics["activation_bytes"] > 0 and metrics["parameter_bytes"] > 0


def test_activations_saved_for_backward_shrink_under_bf16():
    bf16 = MixedPrecision("bf16-mixed", fp32_types=[])
    fit(bf16, steps=1, precision="bf16-mixed")
    switched = MixedPrecision("bf16-mixed", fp32_types=[], full_precision_from=0)
    fit(switched, steps=1, precision="bf16-mixed")
    assert switched.metrics()["low_precision_linear_fraction"] == 0.0
    assert bf16.metrics()["activation_bytes"] < 0.8 * switched.metrics()["activation_bytes"]


def test_switches_to_full_precision_for_the_final_fraction():
    class Dtypes(pl.Callback):
        def __init__(self):
            self.seen = []

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            with trainer.precision_plugin.forward_context():
                self.seen.append(pl_module.blocks(batch[0]).dtype)

    spy = Dtypes()
    technique = MixedPrecision("bf16-mixed", full_precision_from=0.75)
    trainer, _ = fit(technique, steps=8, callbacks=[spy], precision="bf16-mixed")
    assert spy.seen == [torch.bfloat16] * 6 + [torch.float32] * 2  # the steps from 6 = 0.75 * 8 on
    assert technique.metrics()["full_precision"] == 1.0
    assert "forward_context" not in trainer.precision_plugin.__dict__  # restored at teardown


class InfGradAt(pl.Callback):
    def __init__(self, step):
        self.step = step

    def on_after_backward(self, trainer, pl_module):
        if trainer.global_step == self.step:
            pl_module.head.weight.grad[0, 0] = float("inf")


def test_fp16_overflow_steps_are_counted_and_the_loss_scale_reported():
    technique = MixedPrecision("16-mixed")
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    fit(technique, steps=6, callbacks=[InfGradAt(3)], plugins=[AmpPlugin("16-mixed", "cpu", scaler=scaler)])
    metrics = technique.metrics()
    assert metrics["overflow_steps"] == 1
    assert metrics["loss_scale"] == 512.0


# --- resume and DDP --------------------------------------------------------------------------------


def fp16_techniques():
    return [MixedPrecision("16-mixed", fp32_modules=["head"], full_precision_from=12)]


def test_resume_is_exact_with_the_fp16_grad_scaler_state(tmp_path):
    states = assert_resume_equivalent(
        NormClassifier, TinyDataModule, fp16_techniques, half_steps=8, tmp_path=tmp_path,
        trainer_kwargs={"plugins": [FreshScalerAmp()]},
    )
    (state,) = states.values()
    assert state["overflow_steps"] >= 1 and state["loss_scale"] is not None


def bf16_techniques():
    return [MixedPrecision("bf16-mixed", fp32_modules=["head"], full_precision_from=0.5)]


@pytest.mark.ddp
def test_ddp_ranks_agree(tmp_path):
    states = run_ddp(NormClassifier, TinyDataModule, bf16_techniques, max_steps=4, tmp_path=tmp_path,
                     trainer_kwargs={"precision": "bf16-mixed"})
    assert_ranks_identical(states)


# --- preflight ------------------------------------------------------------------------------------


def test_unknown_precision_is_refused_before_training():
    problems = preflight_problems([MixedPrecision("fp8-mixed")])
    assert any("precision='fp8-mixed' is not a mixed precision" in p for p in problems)
    recipe_problems = validate_techniques([MixedPrecision("fp8-mixed")], {})
    assert any("fp8-mixed" in p for p in recipe_problems)


def test_a_trainer_with_another_precision_is_refused():
    problems = preflight_problems([MixedPrecision("bf16-mixed")])  # the Trainer runs 32-true
    assert any("runs precision='32-true' but this technique asks for 'bf16-mixed'" in p for p in problems)


def test_policy_patterns_matching_nothing_are_refused_but_default_types_are_not():
    problems = preflight_problems([MixedPrecision("bf16-mixed", fp32_modules=["lm_head"], fp32_types=["*Router"])],
                                  module=NormClassifier(), precision="bf16-mixed")
    assert any("name pattern 'lm_head' matches no module" in p and "'blocks'" in p for p in problems)
    assert any("type pattern '*Router' matches no module" in p for p in problems)
    # the defaults (norms, routers) may match nothing: TinyClassifier has neither
    assert preflight_problems([MixedPrecision("bf16-mixed")], precision="bf16-mixed") == []
