"""FeatureDistillation: projections trained and checkpointed, normalised per-layer terms."""

import lightning.pytorch as pl
import pytest
import torch
from distill_helpers import Teacher, student

from lightning_eff import PreflightError
from lightning_eff.plugins.distillation import FeatureDistillation
from lightning_eff.plugins.distillation.losses import feature_loss
from lightning_eff.testing import TinyClassifier, TinyDataModule, quiet_trainer_kwargs


def technique(**options):
    return FeatureDistillation(student_layers=["blocks.*.0"], teacher_layers=["blocks.*.0"], teacher=Teacher(), **options)


def fit(techniques, max_steps=3, module=None, callbacks=()):
    pl.seed_everything(0)
    module = module or student()
    trainer = pl.Trainer(**quiet_trainer_kwargs(max_steps=max_steps), callbacks=[*techniques, *callbacks])
    trainer.fit(module, datamodule=TinyDataModule())
    return trainer, module


def test_projections_are_trained_with_the_student_and_in_its_checkpoint(tmp_path):
    fd = technique()
    trainer, module = fit([fd])
    projections = module.distillation_projections
    assert [type(p).__name__ for p in projections] == ["Linear", "Linear"]
    assert projections[0].in_features == 16 and projections[0].out_features == 48
    optimised = {id(p) for group in trainer.optimizers[0].param_groups for p in group["params"]}
    assert all(id(p) in optimised for p in projections.parameters())
    assert not {id(p) for p in fd.teacher.parameters()} & optimised
    assert {k for k in module.state_dict() if k.startswith("distillation_projections.")} == {
        f"distillation_projections.{i}.{w}" for i in (0, 1) for w in ("weight", "bias")
    }
    assert not any(k.startswith("teacher") for k in module.state_dict())
    assert fd.metrics()["loss"] > 0 and fd.teacher_forwards == 3


def test_loss_is_the_mean_of_the_normalised_layer_terms():
    fd = technique(weight=2.0)
    seen = {}

    class Spy(pl.Callback):
        def on_before_backward(self, trainer, pl_module, loss):
            if trainer.global_step == 0:
                s = [fd.capture.features[n] for n in fd._student_names]
                t = list(fd.teacher_features.values())
                with torch.no_grad():
                    terms = [feature_loss(p(a), b) for p, a, b in zip(pl_module.distillation_projections, s, t)]
                seen["expected"] = torch.stack(terms).mean().item()

    fit([fd], max_steps=1, callbacks=[Spy()])
    assert fd.last_loss == pytest.approx(seen["expected"], rel=1e-6)


def test_optimizer_that_leaves_out_the_projections_is_refused_before_training():
    class OwnParams(TinyClassifier):
        def configure_optimizers(self):
            return torch.optim.SGD(list(self.blocks.parameters()) + list(self.head.parameters()), lr=0.1)

    with pytest.raises(PreflightError, match="does not train the projections"):
        fit([technique()], module=OwnParams(hidden=16, depth=2))


def test_convolution_features_get_one_by_one_convolutions():
    from lightning_eff.plugins.distillation.projection import make_projection, projection_problem

    s, t = torch.zeros(2, 4, 5, 5), torch.zeros(2, 8, 5, 5)
    conv = make_projection(s, t)
    assert isinstance(conv, torch.nn.Conv2d) and conv.kernel_size == (1, 1) and conv(s).shape == t.shape
    assert "spatial size" in projection_problem(s, torch.zeros(2, 8, 3, 3))


def test_a_window_that_ends_early_tells_ddp_to_look_for_unused_parameters():
    assert technique(end=0.5).find_unused_parameters
    assert not technique().find_unused_parameters
