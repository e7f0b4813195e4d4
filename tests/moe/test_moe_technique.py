import lightning.pytorch as pl
import pytest
import torch
from moe_models import TinyLlamaModule, TokenDataModule
from torch.nn import functional as F

from lightning_eff import ConfigError
from lightning_eff.plugins.moe import MoELayer, MoEUpcycling
from lightning_eff.plugins.moe.routing import load_balancing_loss, router_z_loss
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


class PlainClassifier(pl.LightningModule):
    """No EfficientModule: router losses cannot reach its loss."""

    def __init__(self):
        super().__init__()
        self.net = TinyClassifier()

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self.net(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


class OptimizerSpy(pl.Callback):
    def on_fit_start(self, trainer, pl_module):
        self.optimized = {id(p) for g in trainer.optimizers[0].param_groups for p in g["params"]}
        self.routers = [m.router.weight for m in pl_module.modules() if isinstance(m, MoELayer)]
        self.params = list(pl_module.parameters())


def fit(technique, steps=4, module=None, data=None, callbacks=()):
    pl.seed_everything(0)
    module = module if module is not None else TinyLlamaModule()
    trainer = pl.Trainer(**quiet_trainer_kwargs(max_steps=steps), callbacks=[technique, *callbacks])
    trainer.fit(module, datamodule=data if data is not None else TokenDataModule())
    return trainer, module


def test_surgery_happens_before_the_optimizer_is_built_and_training_updates_the_experts():
    spy = OptimizerSpy()
    technique = MoEUpcycling(num_experts=4, top_k=2, every_n=1)
    _, module = fit(technique, steps=4, callbacks=[spy])
    assert technique.upcycled == ["model.model.layers.0.mlp", "model.model.layers.1.mlp"]
    assert spy.routers and all(id(p) in spy.optimized for p in spy.params)  # every MoE parameter is optimised
    layer = module.model.model.layers[0].mlp
    assert not torch.equal(layer.experts[0].up_proj.weight, layer.experts[1].up_proj.weight)  # experts diverged


def test_router_losses_enter_the_training_loss_with_their_coefficients():
    technique = MoEUpcycling(num_experts=4, top_k=2, every_n=1, load_balancing_coef=0.5, z_loss_coef=0.25)
    _trainer, module = fit(technique, steps=1)
    module.train()
    batch = TokenDataModule().ids[:8]
    with torch.enable_grad():
        module.per_sample_loss(batch)
    records = [m.last for m in module.modules() if isinstance(m, MoELayer)]
    losses = technique.leff_aux_losses(module=module)
    lb = sum(load_balancing_loss(r.probs, r.experts, 4) for r in records) / 2
    z = sum(router_z_loss(r.logits) for r in records) / 2
    assert losses["moe_load_balancing"].item() == pytest.approx(0.5 * lb.item())
    assert losses["moe_z_loss"].item() == pytest.approx(0.25 * z.item())
    assert losses["moe_load_balancing"].requires_grad


def test_metrics_report_loads_entropy_and_drops():
    technique = MoEUpcycling(num_experts=4, top_k=2, every_n=1, capacity_factor=0.5)
    fit(technique, steps=2)
    metrics = technique.metrics()
    tokens_per_step = 8 * 8  # batch 8 x 8 input positions
    assert sum(metrics[f"tokens_per_expert/{e}"] for e in range(4)) <= tokens_per_step * 2
    assert metrics["dropped_fraction"] >= 0.5 - 1e-6  # capacity 0.5: at most half of the slots fit
    assert 0 <= metrics["router_entropy"] <= torch.log(torch.tensor(4.0)).item() + 1e-6
    assert metrics["load_cv"] >= 0 and metrics["moe_layers"] == 2


def test_plain_lightning_module_trains_when_router_losses_are_off():
    technique = MoEUpcycling(num_experts=2, top_k=1, include_names=["net.blocks.1"], load_balancing_coef=0, z_loss_coef=0)
    _, module = fit(technique, steps=2, module=PlainClassifier(), data=TinyDataModule())
    assert isinstance(module.net.blocks[1], MoELayer)


# -- resume and DDP ------------------------------------------------------------------------------


def drop_upcycling_techniques():
    return [MoEUpcycling(num_experts=4, top_k=2, every_n=2, init="drop", drop_ratio=0.5, capacity_factor=1.0)]


def test_resume_from_an_upcycled_checkpoint_is_exact(tmp_path):
    data = TokenDataModule()
    states = assert_resume_equivalent(TinyLlamaModule, TokenDataModule, drop_upcycling_techniques, data.steps_per_epoch * 2, tmp_path)
    assert next(iter(states.values()))["upcycled"] == ["model.model.layers.1.mlp"]


def moe_ddp_techniques():
    return [MoEUpcycling(num_experts=4, top_k=1, every_n=1)]


@pytest.mark.ddp
def test_ddp_ranks_keep_identical_experts_and_routers(tmp_path):
    states = run_ddp(TinyLlamaModule, TokenDataModule, moe_ddp_techniques, max_steps=3, tmp_path=tmp_path)
    assert_ranks_identical(states)
    assert any(".experts.3." in k for k in states[0]["weights"])


# -- preflight and config errors -----------------------------------------------------------------


def test_top_k_larger_than_the_number_of_experts_is_refused():
    with pytest.raises(ConfigError, match="top_k=3 is larger than num_experts=2"):
        MoEUpcycling(num_experts=2, top_k=3)


def test_virtual_groups_must_divide_experts_and_top_k():
    with pytest.raises(ConfigError, match="multiples of virtual_groups"):
        MoEUpcycling(num_experts=8, top_k=1, init="virtual_group", virtual_groups=2)


def test_preflight_reports_when_no_mlp_matched():
    problems = preflight_problems([MoEUpcycling(num_experts=2, top_k=1)])  # TinyClassifier has no SwiGLU/BERT MLP
    assert len(problems) == 1 and "no MLP matched (every_n=2)" in problems[0] and "include_names" in problems[0]


def test_preflight_reports_a_d_ff_not_divisible_by_the_virtual_groups():
    technique = MoEUpcycling(num_experts=6, top_k=3, every_n=1, init="virtual_group", virtual_groups=3)
    problems = preflight_problems([technique], module=TinyLlamaModule(), data=TokenDataModule())
    assert len(problems) == 2 and "d_ff=64, not divisible by virtual_groups=3" in problems[0]


def test_preflight_refuses_expert_choice_on_a_causal_lm_and_drop_on_an_unstructured_block():
    problems = preflight_problems([MoEUpcycling(num_experts=2, top_k=1, every_n=1, routing="expert_choice")], module=TinyLlamaModule(), data=TokenDataModule())
    assert len(problems) == 1 and "leaks future tokens" in problems[0]
    problems = preflight_problems([MoEUpcycling(num_experts=2, top_k=1, include_names=["blocks.0"], init="drop")])
    assert len(problems) == 1 and "init='drop' needs an FFN" in problems[0]


def test_preflight_asks_for_the_mixin_when_router_losses_are_on():
    module = PlainClassifier()
    problems = preflight_problems([MoEUpcycling(num_experts=2, top_k=1, include_names=["net.blocks.1"])], module=module)
    assert len(problems) == 1 and "EfficientModule" in problems[0] and "load_balancing_coef=0" in problems[0]


def test_recipe_builds_the_technique():
    (technique,) = load_recipe("moe_upcycling").build()
    assert isinstance(technique, MoEUpcycling) and technique.config.num_experts == 8 and technique.config.top_k == 2
